"""A picture people can judge: composite | mask | the output of each model, at native resolution.

Rows are composites (real cut-and-paste ones have no ground truth; a test composite may add its real
image as the last column), columns are labelled. Every image is shown at its own size (no resizing of
the outputs), so what a viewer sees is what ``harmonize`` returns.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PAD = 4
HEADER = 16


@dataclass
class Row:
    name: str
    composite: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W) 0..255 or bool
    real: np.ndarray | None = None


def harmonize_rows(rows: Sequence[Row], predictors: dict[str, object]) -> list[list[np.ndarray]]:
    """For each row: [composite, mask (RGB), output of each predictor..., real if known]."""
    out = []
    for row in rows:
        m = row.mask if row.mask.dtype == np.uint8 else row.mask.astype(np.uint8) * 255
        cells = [row.composite, np.repeat(m[..., None], 3, axis=-1)]
        cells += [p(row.composite, m, name=row.name) for p in predictors.values()]
        if row.real is not None:
            cells.append(row.real)
        out.append(cells)
    return out


def grid(cells: list[list[np.ndarray]], labels: Sequence[str], row_names: Sequence[str] = ()) -> Image.Image:
    """Rows of equally many uint8 images (each row may have its own size) -> one labelled image."""
    widths = [sum(c.shape[1] for c in row) + PAD * (len(row) + 1) for row in cells]
    heights = [max(c.shape[0] for c in row) + HEADER + PAD for row in cells]
    canvas = Image.new("RGB", (max(widths, default=1), sum(heights, HEADER) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = HEADER
    x = PAD
    first = cells[0] if cells else []
    for label, cell in zip(labels, first, strict=False):
        draw.text((x, 2), label, fill=(0, 0, 0))
        x += cell.shape[1] + PAD
    for i, row in enumerate(cells):
        if i < len(row_names):
            draw.text((PAD, y + 1), row_names[i], fill=(80, 80, 80))
        x = PAD
        for cell in row:
            canvas.paste(Image.fromarray(cell), (x, y + HEADER))
            x += cell.shape[1] + PAD
        y += heights[i]
    return canvas


def showcase_png(rows: Sequence[Row], predictors: dict[str, object]) -> bytes:
    """PNG bytes of ``grid(harmonize_rows(...))`` with columns composite | mask | <label>... [| real]."""
    labels = ["composite", "mask", *predictors]
    if rows and rows[0].real is not None:
        labels.append("real")
    image = grid(harmonize_rows(rows, predictors), labels, [r.name for r in rows])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
