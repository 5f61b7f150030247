"""The paper's evaluation protocol, as the RainNet authors' ``evaluate.py`` runs it (docs/PAPER_PROTOCOL.md).

Facts of their code, reproduced here (not copied):

* loader: composite and real ``convert("RGB")`` and resized to the network's size with torchvision's
  default for PIL images, i.e. PIL ``BILINEAR``; the mask ``convert("1")`` (PIL's default Floyd-Steinberg
  dithering) and resized, which PIL does by ``NEAREST`` for a mode-"1" image. ``to_tensor`` then
  ``Normalize(0.5, 0.5)`` in float32; the composite's background is replaced by the real's
  (``comp * mask + real * (1 - mask)``).
* the network's output is pasted (``pred * mask + comp * (1 - mask)``, their ``processImage``) and every
  image goes to uint8 by ``tensor2im``: ``(x + 1) / 2 * 255`` in float32, then ``astype(uint8)``, which
  truncates (it does not round).
* per image, scikit-image's ``mean_squared_error`` and ``peak_signal_noise_ratio`` (data range 255 from
  uint8, not capped: an exact match is ``inf`` dB); fMSE and fPSNR as the iHarmony4 papers compute them:
  the squared error summed over the foreground (all three channels) over ``3 x`` its pixel count, and
  ``10 log10(255^2 / fMSE)``. An empty mask at the network's size has no fMSE: 0 and ``inf`` (flagged).

The native-resolution scores (``components.evaluation.scoring``) and these are never mixed in one number.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

METRICS = ("mse", "psnr", "fmse", "fpsnr")


def load_like_authors(composite: np.ndarray, mask: np.ndarray, real: np.ndarray, size: int):
    """uint8 composite / real (H, W, 3) and 0..255 alpha mask (H, W) -> their loader's tensors:
    composite (3, S, S) and real in [-1, 1] (float32), mask (1, S, S) 0/1."""
    import torch

    def to_tensor(img: Image.Image) -> torch.Tensor:
        a = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255)

    comp = to_tensor(Image.fromarray(composite).convert("RGB").resize((size, size), Image.BILINEAR))
    rl = to_tensor(Image.fromarray(real).convert("RGB").resize((size, size), Image.BILINEAR))
    m1 = Image.fromarray(np.asarray(mask, dtype=np.uint8)).convert("1").resize((size, size))  # mode "1": always NEAREST
    m = torch.from_numpy(np.asarray(m1, dtype=np.uint8).copy()).float()[None]
    comp, rl = (comp - 0.5) / 0.5, (rl - 0.5) / 0.5
    return comp * m + rl * (1 - m), m, rl


def tensor2im(x) -> np.ndarray:
    """(3, S, S) tensor in [-1, 1] -> uint8 (S, S, 3): ``(x + 1) / 2 * 255`` in float32, truncated."""
    a = x.detach().cpu().float().numpy()
    return ((np.transpose(a, (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)


def scores(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict:
    """Per-image scores of uint8 (S, S, 3) ``pred`` against ``real`` under the 0/1 mask (S, S)."""
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an exact match: MSE 0, PSNR inf (as theirs)
        mse = float(mean_squared_error(pred, real))
        psnr = float(peak_signal_noise_ratio(pred, real))
    fg = np.asarray(mask) > 0.5
    area = int(fg.sum())
    diff = pred.astype(np.float64) - real.astype(np.float64)
    fmse = float((diff[fg] ** 2).sum() / (3 * area)) if area else 0.0
    with np.errstate(divide="ignore"):
        fpsnr = float(10 * np.log10(255.0**2 / fmse)) if fmse else float("inf")
    return {"mse": mse, "psnr": psnr, "fmse": fmse, "fpsnr": fpsnr, "fg_ratio": area / fg.size,
            "empty_fg": area == 0}  # fmt: skip


def evaluate_batch(model, triplets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int,
                   device="cpu") -> list[dict]:  # fmt: skip
    """(composite, alpha mask, real) at native size -> per image ``{"harmonized": scores, "composite":
    scores}``, the network (``forward(composite, mask)``, background pasted back) run once on the batch."""
    import torch

    loaded = [load_like_authors(c, m, r, size) for c, m, r in triplets]
    comp = torch.stack([t[0] for t in loaded]).to(device)
    mask = torch.stack([t[1] for t in loaded]).to(device)
    with torch.inference_mode():
        pred = model(comp, mask)
        pred = pred * mask + comp * (1 - mask)  # their processImage (a no-op if the model pasted already)
    out = []
    for i, (_, m, rl) in enumerate(loaded):
        real_u8, mask01 = tensor2im(rl), m[0].numpy()
        out.append({
            "harmonized": scores(tensor2im(pred[i]), real_u8, mask01),
            "composite": scores(tensor2im(comp[i]), real_u8, mask01),
        })  # fmt: skip
    return out
