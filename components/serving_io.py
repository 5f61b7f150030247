"""The served model's input and output: one place for what ``predict`` takes, and a client for it.

The MLflow model (``components.mlflow_model``) is a pyfunc with a tensor signature, so
``mlflow models serve`` takes the standard tensor request: named uint8 arrays as nested JSON lists,

    {"inputs": {"composite": [[[[r, g, b], ...], ...]], "mask": [[[0, 255, ...], ...]]}}

composite ``(N, H, W, 3)`` RGB, mask ``(N, H, W)`` with 255 (or any value > 127) on the pasted object,
any N and any H x W; the answer is ``{"predictions": [...]}``, the harmonized images as uint8
``(N, H, W, 3)`` with the background copied from the composite. ``python -m components.serving_io
request composite.png mask.png`` writes such a request; ``... response answer.json out.png`` turns an
answer back into a PNG (README, "Serving").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

INPUT_HELP = '{"composite": uint8 (N, H, W, 3), "mask": uint8 (N, H, W)}'


def parse_input(model_input: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``predict``'s input as per-image lists (composite HxWx3, mask HxW); a clear ValueError otherwise.

    One image without the batch axis, and a mask with a trailing channel of 1, are accepted too.
    """
    if not isinstance(model_input, Mapping) or not {"composite", "mask"} <= set(model_input):
        raise ValueError(f"expected {INPUT_HELP}, got {type(model_input).__name__}")
    composite, mask = np.asarray(model_input["composite"]), np.asarray(model_input["mask"])
    if composite.ndim == 3:
        composite = composite[None]
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 2:
        mask = mask[None]
    if composite.ndim != 4 or composite.shape[-1] != 3:
        raise ValueError(f"composite: expected uint8 (N, H, W, 3), got shape {composite.shape}")
    if mask.shape != composite.shape[:3]:
        raise ValueError(f"mask: expected shape {composite.shape[:3]} to match the composite, got {mask.shape}")
    for name, a in (("composite", composite), ("mask", mask)):
        if a.dtype != np.uint8 and a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{name}: values must lie in 0..255, got {a.min()}..{a.max()}")
    return list(composite.astype(np.uint8)), list(mask.astype(np.uint8))


def format_output(images: Sequence[np.ndarray]) -> np.ndarray:
    """The harmonized images as one uint8 (N, H, W, 3) array (the served ``predictions``)."""
    return np.stack([np.asarray(i, dtype=np.uint8) for i in images])


def request(composite: np.ndarray, mask: np.ndarray) -> dict:
    """The JSON body for ``POST /invocations`` of one composite (HxWx3) and its mask (HxW)."""
    comp, m = parse_input({"composite": composite, "mask": mask})
    return {"inputs": {"composite": np.stack(comp).tolist(), "mask": np.stack(m).tolist()}}


def response_images(answer: Mapping[str, Any]) -> np.ndarray:
    """The harmonized uint8 (N, H, W, 3) images of a ``/invocations`` answer."""
    if "predictions" not in answer:
        raise ValueError(f"not a model server answer (no 'predictions'): keys {sorted(answer)}")
    out = np.asarray(answer["predictions"])
    if out.ndim != 4 or out.shape[-1] != 3 or out.min() < 0 or out.max() > 255:
        raise ValueError(f"predictions: expected uint8 (N, H, W, 3), got shape {out.shape}")
    return out.astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(prog="python -m components.serving_io", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    req = sub.add_parser("request", help="write the JSON request for a composite and its mask to stdout")
    req.add_argument("composite")
    req.add_argument("mask")
    res = sub.add_parser("response", help="write the harmonized image of a server answer as a PNG")
    res.add_argument("answer", help="the JSON the server answered ('-' for stdin)")
    res.add_argument("out", help="output PNG")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "request":
            comp = np.asarray(Image.open(args.composite).convert("RGB"))
            mask = np.asarray(Image.open(args.mask).convert("L"))
            json.dump(request(comp, mask), sys.stdout, separators=(",", ":"))
        else:
            text = sys.stdin.read() if args.answer == "-" else Path(args.answer).read_text()
            Image.fromarray(response_images(json.loads(text))[0]).save(args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
