"""The served model's input and output: one place for what ``predict`` takes, and a client for it.

The MLflow model (``components.mlflow_model``) is a pyfunc with a tensor signature, so
``mlflow models serve`` takes the standard tensor request: named uint8 arrays as nested JSON lists,

    {"inputs": {"composite": [[[[r, g, b], ...], ...]], "mask": [[[0, 255, ...], ...]]}}

composite ``(N, H, W, 3)`` RGB, mask ``(N, H, W)`` with 255 (or any value > 127) on the pasted object,
any N and any H x W; the answer is ``{"predictions": [...]}``, the harmonized images as uint8
``(N, H, W, 3)`` with the background copied from the composite.

The compact form sends the image files themselves, base64-encoded (PNG; any format PIL reads), one
string or a list of N, and is answered in kind (``predictions``: base64 PNGs): a 1024x1024 request is the
size of its two files instead of ~15 MB of nested lists,

    {"inputs": {"composite_png": "<base64>", "mask_png": "<base64>"}}

``python -m components.inference.serving_io request composite.png mask.png`` writes a compact request (``--tensor``:
the nested lists); ``... response answer.json out.png`` turns either answer back into a PNG (README,
"Serving").

``python -m pipeline.serve -m models:/rainnet@champion -p 5001`` (``serve`` below) is
``mlflow models serve --env-manager local`` (MLflow's own scoring app: the same endpoints and answers)
behind a guard on the JSON's nesting depth. MLflow parses the body with ``json.loads`` before any model
code runs and turns only ``JSONDecodeError`` into a 400; a body nested deeper than Python's recursion
limit (~1000 levels, a few KB) raises ``RecursionError`` there (``_decode_json_input`` in
``mlflow/pyfunc/scoring_server/__init__.py``), which its server answers with a bare 500. The guard
answers a body nested deeper than any request of this model (``MAX_NESTING``) with a 400 naming the
depth, without parsing it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

INPUT_HELP = (
    '{"composite": uint8 (N, H, W, 3), "mask": uint8 (N, H, W)} or '
    '{"composite_png": base64, "mask_png": base64}'
)
TENSOR_KEYS, COMPACT_KEYS = ("composite", "mask"), ("composite_png", "mask_png")
# The deepest request of this model is the tensor form, 6 levels ({"inputs": {"composite": [N][H][W][3]}});
# MLflow's parser fails (a 500) past ~1000. Deeper than this is answered 400 before anything parses it.
MAX_NESTING = 32


def is_compact(model_input: Any) -> bool:
    """Whether ``model_input`` is the compact form (base64 image files), answered in kind."""
    return isinstance(model_input, Mapping) and any(k in model_input for k in COMPACT_KEYS)


def _strings(value: Any, name: str) -> list[str]:
    """One base64 string or a list of them (as MLflow's server parses JSON: a 0-d or 1-d array)."""
    items = np.asarray(value, dtype=object).reshape(-1).tolist()
    if not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name}: expected a base64 string or a list of them")
    return items


def _decode_b64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: not valid base64") from None


def _parse_compact(model_input: Mapping) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from components.data.images import BadInput, decode_image, decode_mask

    comps, masks = (_strings(model_input[k], k) for k in COMPACT_KEYS)
    if len(comps) != len(masks):
        raise ValueError(f"mask_png: {len(masks)} images for {len(comps)} composites")
    out_c, out_m = [], []
    for i, (c, m) in enumerate(zip(comps, masks, strict=True)):
        where = f"[{i}]" if len(comps) > 1 else ""
        try:
            comp = decode_image(_decode_b64(c, f"composite_png{where}"), f"composite_png{where}")
            mask = decode_mask(_decode_b64(m, f"mask_png{where}"), f"mask_png{where}", soft=True)
        except BadInput as exc:
            raise ValueError(str(exc)) from None
        if mask.shape != comp.shape[:2]:
            raise ValueError(f"mask_png{where}: {mask.shape[1]}x{mask.shape[0]}, the composite is "
                             f"{comp.shape[1]}x{comp.shape[0]}")  # fmt: skip
        out_c.append(comp)
        out_m.append(mask)
    return out_c, out_m


def _missing(model_input: Any) -> str | None:
    """The short reason an input is neither form (no arrays echoed back), else None."""
    if not isinstance(model_input, Mapping):
        return f"expected {INPUT_HELP}, got {type(model_input).__name__}"
    for keys in (COMPACT_KEYS, TENSOR_KEYS):
        if any(k in model_input for k in keys):
            missing = [k for k in keys if k not in model_input]
            return f"missing input {missing[0]!r} (expected {INPUT_HELP})" if missing else None
    return f"expected {INPUT_HELP}, got keys {sorted(map(str, model_input))}"


def parse_input(model_input: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``predict``'s input as per-image lists (composite HxWx3, mask HxW); a clear ValueError otherwise.

    Either form (module docstring). In the tensor form one image without the batch axis, and a mask with
    a trailing channel of 1, are accepted too.
    """
    reason = _missing(model_input)
    if reason:
        raise ValueError(reason)
    if is_compact(model_input):
        return _parse_compact(model_input)
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
        if a.dtype.kind not in "uib":  # 0..1 floats cast to uint8 would be a black image, not an error
            raise ValueError(f"{name}: expected integer pixel values 0..255 (uint8), got {a.dtype} values; "
                             "send the image's 8-bit values, not floats scaled to 0..1")  # fmt: skip
        if a.dtype != np.uint8 and a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{name}: values must lie in 0..255, got {a.min()}..{a.max()}")
    return list(composite.astype(np.uint8)), list(mask.astype(np.uint8))


def _png_b64(image: np.ndarray) -> str:
    """A compressed PNG, base64 (the shards' ``encode_png`` stores uncompressed: speed over size)."""
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def format_output(images: Sequence[np.ndarray], compact: bool = False) -> np.ndarray:
    """The harmonized images as one uint8 (N, H, W, 3) array (the served ``predictions``), or for a
    compact request their base64 PNGs, one string per image."""
    if compact:
        return np.array([_png_b64(i) for i in images], dtype=object)
    return np.stack([np.asarray(i, dtype=np.uint8) for i in images])


def request(composite: np.ndarray, mask: np.ndarray, compact: bool = True) -> dict:
    """The JSON body for ``POST /invocations`` of one composite (HxWx3) and its mask (HxW): base64 PNGs,
    or (``compact=False``) the tensor form's nested lists."""
    comp, m = parse_input({"composite": composite, "mask": mask})
    if compact:
        return {"inputs": {"composite_png": _png_b64(comp[0]), "mask_png": _png_b64(m[0])}}
    return {"inputs": {"composite": np.stack(comp).tolist(), "mask": np.stack(m).tolist()}}


def response_images(answer: Mapping[str, Any]) -> np.ndarray:
    """The harmonized uint8 (N, H, W, 3) images of a ``/invocations`` answer (either form)."""
    if "predictions" not in answer:
        raise ValueError(f"not a model server answer (no 'predictions'): keys {sorted(answer)}")
    preds = answer["predictions"]
    if isinstance(preds, list) and preds and all(isinstance(p, str) for p in preds):
        from components.data.images import decode_image

        return np.stack([decode_image(_decode_b64(p, "predictions"), "predictions") for p in preds])
    out = np.asarray(preds)
    if out.ndim != 4 or out.shape[-1] != 3 or out.min() < 0 or out.max() > 255:
        raise ValueError(f"predictions: expected uint8 (N, H, W, 3), got shape {out.shape}")
    return out.astype(np.uint8)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string literal, escapes included


def nesting_depth(body: bytes) -> int:
    """How deep the JSON ``body`` nests arrays and objects (brackets inside strings not counted), without
    parsing it: a linear scan, whatever the depth."""
    b = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    steps = np.zeros(b.shape, dtype=np.int32)
    steps[(b == ord("[")) | (b == ord("{"))] = 1
    steps[(b == ord("]")) | (b == ord("}"))] = -1
    return int(steps.cumsum().max(initial=0))


class NestingGuard:
    """ASGI middleware: a JSON request nested deeper than ``max_depth`` is answered ``400`` (MLflow's error
    body, ``{"error_code": "BAD_REQUEST", "message": ...}``) before the app reads it; others pass as sent."""

    def __init__(self, app, max_depth: int = MAX_NESTING):
        self.app, self.max_depth = app, max_depth

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or ())
        if scope["type"] != "http" or not headers.get(b"content-type", b"").startswith(b"application/json"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        depth = nesting_depth(body)
        if depth > self.max_depth:
            text = (f"the request's JSON nests {depth} levels deep; this model's requests nest at most 6 "
                    f"(limit {self.max_depth}): expected {{\"inputs\": {INPUT_HELP}}}")  # fmt: skip
            answer = json.dumps({"error_code": "BAD_REQUEST", "message": text}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(answer)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": answer})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def main(argv: Sequence[str] | None = None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(prog="python -m components.inference.serving_io", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    req = sub.add_parser("request", help="write the JSON request for a composite and its mask to stdout")
    req.add_argument("composite")
    req.add_argument("mask")
    req.add_argument("--tensor", action="store_true", help="the nested-list tensor form (large)")
    res = sub.add_parser("response", help="write the harmonized image of a server answer as a PNG")
    res.add_argument("answer", help="the JSON the server answered ('-' for stdin)")
    res.add_argument("out", help="output PNG")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "request" and not args.tensor:  # the files as they are: nothing to re-encode
            files = (Path(args.composite).read_bytes(), Path(args.mask).read_bytes())
            body = {k: base64.b64encode(b).decode("ascii") for k, b in zip(COMPACT_KEYS, files, strict=True)}
            json.dump({"inputs": body}, sys.stdout, separators=(",", ":"))
        elif args.cmd == "request":
            comp = np.asarray(Image.open(args.composite).convert("RGB"))
            mask = np.asarray(Image.open(args.mask).convert("L"))
            json.dump(request(comp, mask, compact=False), sys.stdout, separators=(",", ":"))
        else:
            text = sys.stdin.read() if args.answer == "-" else Path(args.answer).read_text()
            Image.fromarray(response_images(json.loads(text))[0]).save(args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
