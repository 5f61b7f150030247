"""A PNG grid of sample triplets (composite | mask | real), to look at what ``prepare`` made."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from components.data.images import decode_png

CELL = 96
LABEL = 14


def sample_grid(rows: list[dict], columns: int = 2) -> bytes:
    """One tile per row: composite, mask, real side by side, labelled with split and method."""
    n = max(len(rows), 1)
    tile_w, tile_h = 3 * CELL, CELL + LABEL
    lines = -(-n // columns)
    canvas = Image.new("RGB", (columns * (tile_w + 4), lines * (tile_h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        x0, y0 = (i % columns) * (tile_w + 4), (i // columns) * (tile_h + 4)
        draw.text((x0 + 2, y0 + 1), f"{row['split']} {row['subset']} {row['method']}", fill=(0, 0, 0))
        for j, col in enumerate(("composite", "mask", "real")):
            im = Image.fromarray(decode_png(row[col])).convert("RGB").resize((CELL, CELL), Image.NEAREST)
            canvas.paste(im, (x0 + j * CELL, y0 + LABEL))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
