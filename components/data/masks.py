"""Object-like foreground masks made from the photo itself (for sources without annotated masks).

A mask is grown from one superpixel (SLIC) or graph segment (Felzenszwalb) by merging the most similar
neighbouring segment until it reaches a target area, then filled, smoothed and reduced to its largest
component. It follows image edges, so it looks like an object; plain boxes and ellipses are rejected.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb, slic


def _segments(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = image.shape[0] * image.shape[1]
    if rng.random() < 0.5:
        return slic(
            image,
            n_segments=int(rng.integers(16, 48)),
            compactness=float(rng.uniform(5, 20)),
            start_label=0,
            channel_axis=-1,
        )
    return felzenszwalb(image, scale=float(rng.uniform(40, 200)), sigma=0.6, min_size=max(4, size // 150))


def _adjacency(labels: np.ndarray) -> list[set[int]]:
    n = int(labels.max()) + 1
    adj: list[set[int]] = [set() for _ in range(n)]
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        diff = a != b
        for i, j in set(zip(a[diff].tolist(), b[diff].tolist(), strict=True)):
            adj[i].add(j)
            adj[j].add(i)
    return adj


def _grow(labels: np.ndarray, lab: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    n = int(labels.max()) + 1
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    colour = np.stack([np.bincount(flat, lab[..., c].ravel(), minlength=n) for c in range(3)], 1)
    colour /= np.maximum(area, 1)[:, None]
    adj = _adjacency(labels)
    total = float(flat.size)
    region = {int(rng.integers(n))}
    covered = area[list(region)].sum()
    while covered / total < target:
        frontier = sorted(set().union(*(adj[r] for r in region)) - region)
        if not frontier:
            break
        mean = (colour[list(region)] * area[list(region), None]).sum(0) / covered
        dist = np.linalg.norm(colour[frontier] - mean, axis=1) * rng.uniform(0.7, 1.3, len(frontier))
        pick = frontier[int(np.argmin(dist))]
        region.add(pick)
        covered += area[pick]
    return np.isin(labels, list(region))


def _smooth(mask: np.ndarray, sigma: float) -> np.ndarray:
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.gaussian_filter(mask.astype(np.float32), sigma) >= 0.5
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def is_plain_shape(mask: np.ndarray, tol: float = 0.95) -> bool:
    """True for a mask that is (nearly) its bounding box or its moment ellipse: not object-like."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return True
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    if len(ys) / box >= tol:
        return True
    cy, cx = ys.mean(), xs.mean()
    cov = np.cov(np.stack([ys - cy, xs - cx])) + np.eye(2) * 1e-6
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    d = np.stack([yy - cy, xx - cx], -1)
    # The uniform ellipse with this covariance has Mahalanobis radius 2.
    ellipse = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d) <= 4.0
    iou = (ellipse & mask).sum() / max((ellipse | mask).sum(), 1)
    return iou >= tol


def object_mask(
    image: np.ndarray,
    rng: np.random.Generator,
    min_ratio: float = 0.03,
    max_ratio: float = 0.5,
    attempts: int = 8,
) -> np.ndarray | None:
    """A bool (H, W) object-like mask covering ``min_ratio..max_ratio`` of the image, or None."""
    lab = rgb2lab(image)
    sigma = max(0.6, image.shape[0] / 64.0)
    for _ in range(attempts):
        labels = _segments(image, rng)
        if labels.max() < 2:
            continue
        target = float(np.exp(rng.uniform(np.log(min_ratio * 1.3), np.log(max_ratio * 0.85))))
        mask = _smooth(_grow(labels, lab, target, rng), sigma)
        ratio = mask.mean()
        if min_ratio <= ratio <= max_ratio and not is_plain_shape(mask):
            return mask
    return None
