"""The two pictures a training run leaves in MLflow: a sample grid per epoch and the convergence curve."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = ("composite", "mask", "output", "real")


def sample_grid(
    composite: np.ndarray, mask: np.ndarray, output: np.ndarray, real: np.ndarray, pad: int = 2
) -> Image.Image:
    """uint8 (N, H, W, 3) images and an (N, H, W) mask -> one image, a row per sample:
    composite | mask | output | real, with a header line naming the columns."""
    n, h, w, _ = composite.shape
    m = mask.astype(np.uint8)
    if m.max(initial=0) <= 1:
        m = m * 255
    m3 = np.repeat(m[..., None], 3, axis=-1)
    header = 12
    width = 4 * w + 5 * pad
    height = header + n * h + (n + 1) * pad
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i in range(n):
        y = header + pad + i * (h + pad)
        for j, img in enumerate((composite[i], m3[i], output[i], real[i])):
            x = pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    for j, name in enumerate(COLUMNS):
        draw.text((pad + j * (w + pad) + 1, 0), name[: max(1, w // 6)], fill=(0, 0, 0))
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def convergence_curve(history: Sequence[dict], baseline: dict | None = None) -> bytes:
    """PNG of val PSNR and val fMSE per epoch (the paper's Fig. 2-4 kind), composite as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "val_psnr", "PSNR (dB)"), (axes[1], "val_fmse", "fMSE")):
        ax.plot(epochs, [r[key] for r in history], marker="o", ms=3, label="model")
        if baseline and key in baseline:
            ax.axhline(baseline[key], ls="--", color="grey", label="composite")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {label}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
