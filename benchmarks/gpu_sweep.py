"""Explore training recipes fast on one GPU: many configs side by side on prepared shards, same arithmetic.

Each config is a list of ``-S key=value`` overrides over a profile; each trains in its own process with
the project's own ``engine.train_step`` (the step ``pipeline.train`` runs), from data held on the GPU, so
a CPU recipe can be chosen in minutes instead of hours. Every epoch is scored on the val split (network
size) and on the test split at native resolution the way the predictor does it (transform head: the
transform map upsampled and applied to the full-size composite; image head: not scored at native size),
and written at once as a JSON line, so a run cut short still reports what it reached.

    python benchmarks/gpu_sweep.py --root /tmp/store --dataset lalonde --profile lalonde-cpu \
        --config ref "model.generator.head=affine" --config lr1e3 "model.generator.head=affine,train.lr=0.001" \
        --out results/ --deadline 480

Not a test of anything: the numbers guide which recipe gets a full CPU run (``bench_quality.py``),
and only that run's numbers go into ``benchmarks/quality.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BINS = ((0, 300), (300, 1000), (1000, float("inf")))


def _decode_rows(args):
    path, low = args
    import pyarrow.parquet as pq

    from components.data import images

    rows = pq.read_table(path, columns=["composite", "mask", "real"]).to_pylist()
    out = {k: [] for k in ("comp", "mask", "real", "fcomp", "fmask", "freal")}
    import io

    from PIL import Image

    for r in rows:
        c, m, t = (np.asarray(Image.open(io.BytesIO(r[k]))) for k in ("composite", "mask", "real"))
        m = m if m.ndim == 2 else m[..., 0]
        if c.shape[0] != low or c.shape[1] != low:
            out["fcomp"].append(c)
            out["fmask"].append(m)
            out["freal"].append(t)
            c, t = images.resize_image(c, low), images.resize_image(t, low)
            m = images.resize_mask(m, low)
        out["comp"].append(c)
        out["mask"].append(m >= 128 if m.dtype != bool else m)
        out["real"].append(t)
    return {k: v for k, v in out.items() if v}


def load_split(root: str, dataset: str, split: str, low: int, pool) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(f"{root}/datasets/{dataset}/**/{split}-*.parquet", recursive=True))
    if not files:
        raise SystemExit(f"no {split} shards under {root}/datasets/{dataset}")
    parts = pool.map(_decode_rows, [(f, low) for f in files])
    lists = {k: [a for p in parts for a in p.get(k, [])] for k in parts[0]}
    # Full-size test images are kept only when they share one size (lalonde: 256x256): batched on the GPU.
    return {k: np.stack(v) for k, v in lists.items() if len({a.shape for a in v}) == 1}


def fmse_np(out: np.ndarray, real: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from components.evaluation import metrics as M

    return np.asarray(M.batch_metrics(out, real, mask.astype(np.float32))["fmse"], dtype=np.float64)


def run_config(name: str, overrides: list[str], args, data_file: str, gpu_lock=None) -> None:
    import torch

    from components.config import load_params
    from components.data import images
    from components.models.heads import apply_transform
    from components.training import engine

    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = load_params(REPO / "params.yaml", overrides, profile=args.profile)
    t = params.train
    d = dict(np.load(data_file))
    low = d["train_comp"].shape[1]
    gen_spec = engine.generator_spec(params.model.generator, low)
    state = engine.build_state(params, gen_spec, device=dev)
    g = {k: torch.from_numpy(d[k]).to(dev) for k in ("train_comp", "train_mask", "train_real")}
    n = len(g["train_comp"])
    epochs = t.epochs + t.decay_epochs
    out_path = Path(args.out, "sweep.jsonl")  # one file for all configs: appended a line at a time
    t0 = time.time()
    gen = torch.Generator(device="cpu").manual_seed(t.seed)
    best = None

    def batch_of(idx):
        comp = images.from_uint8(g["train_comp"][idx]).permute(0, 3, 1, 2)
        real = images.from_uint8(g["train_real"][idx]).permute(0, 3, 1, 2)
        mask = g["train_mask"][idx].float()[:, None]
        if t.hflip:
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(dev)[:, None, None, None]
            comp, real, mask = (torch.where(flip, x.flip(-1), x) for x in (comp, real, mask))
        return {"composite": comp.contiguous(), "mask": mask.contiguous(), "real": real.contiguous()}

    @torch.no_grad()
    def network(comp_u8, mask_b):
        net = engine.eval_generator(state).eval()
        outs, trans = [], []
        for s in range(0, len(comp_u8), 256):
            x, m = images.batch_to_tensor(comp_u8[s : s + 256], mask_b[s : s + 256], dev)
            y, aux = net(x, m, return_aux=True)
            outs.append(images.images_to_uint8(y.float()))
            trans.append(None if aux.get("transform") is None else aux["transform"].float())
        net.train()
        return np.concatenate(outs), (None if trans[0] is None else torch.cat(trans))

    @torch.no_grad()
    def native(trans: torch.Tensor) -> np.ndarray:
        fc, fm = d["test_fcomp"], d["test_fmask"]
        res = []
        for s in range(0, len(fc), 128):
            c = torch.from_numpy(fc[s : s + 128]).to(dev)
            a = torch.from_numpy(fm[s : s + 128]).to(dev).float()[:, None] / 255.0
            tr = trans[s : s + 128]
            if tr.shape[-1] != 1:
                tr = torch.nn.functional.interpolate(
                    tr, size=c.shape[1:3], mode="bilinear", align_corners=False
                )
            x = images.from_uint8(c).permute(0, 3, 1, 2)
            new = images.to_uint8(apply_transform(tr, x)).float()
            cf = c.permute(0, 3, 1, 2).float()
            res.append(
                torch.round(cf + a * (new - cf))
                .clamp(0, 255)
                .to(torch.uint8)
                .permute(0, 2, 3, 1)
                .cpu()
                .numpy()
            )
        return np.concatenate(res)

    def score(epoch: int, steps_per_s: float) -> dict:
        vo, _ = network(d["val_comp"], d["val_mask"])
        vo = np.where(d["val_mask"][..., None], vo, d["val_comp"])
        val = fmse_np(vo, d["val_real"], d["val_mask"]).mean()
        val_c = fmse_np(d["val_comp"], d["val_real"], d["val_mask"]).mean()
        to, tr = network(d["test_comp"], d["test_mask"])
        to = np.where(d["test_mask"][..., None], to, d["test_comp"])
        t64 = fmse_np(to, d["test_real"], d["test_mask"]).mean()
        t64_c = fmse_np(d["test_comp"], d["test_real"], d["test_mask"]).mean()
        rec = {
            "config": name,
            "overrides": overrides,
            "epoch": epoch,
            "minutes": round((time.time() - t0) / 60, 2),
            "steps_per_s": round(steps_per_s, 1),
            "val_fmse": round(val, 1),
            "val_ratio": round(val / val_c, 4),
            "test64_ratio": round(t64 / t64_c, 4),
        }
        if tr is not None and "test_fcomp" in d:
            fmask = d["test_fmask"] >= 128
            nat = fmse_np(native(tr), d["test_freal"], fmask)
            comp = fmse_np(d["test_fcomp"], d["test_freal"], fmask)
            rec.update(
                test_fmse=round(nat.mean(), 1),
                test_comp_fmse=round(comp.mean(), 1),
                test_ratio=round(nat.mean() / comp.mean(), 4),
            )
            rec["bins"] = {
                f"{lo}-{hi}": round(
                    float(nat[(comp >= lo) & (comp < hi)].mean() / comp[(comp >= lo) & (comp < hi)].mean()), 3
                )
                for lo, hi in BINS
            }
        return rec

    with out_path.open("a") as f:
        for epoch in range(1, epochs + 1):
            perm = torch.randperm(n, generator=gen)
            te = time.time()
            steps = 0
            for s in range(0, n - t.batch_size + 1, t.batch_size):
                engine.train_step(state, batch_of(perm[s : s + t.batch_size].to(dev)), t, dev, amp=False)
                steps += 1
                if time.time() - args.start > args.deadline:
                    break
            engine.end_epoch(state)
            rec = score(epoch, steps / max(time.time() - te, 1e-9))
            rec["steps"] = steps  # fewer than an epoch's when the deadline cut it short
            if best is None or rec["val_fmse"] < best["val_fmse"]:
                best = rec
            rec["best_val_epoch"] = best["epoch"]
            rec["best_test_ratio"] = best.get("test_ratio")
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(json.dumps(rec), flush=True)
            if time.time() - args.start > args.deadline:
                break


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--profile", default=None)
    ap.add_argument(
        "--config",
        nargs=2,
        action="append",
        metavar=("NAME", "OVERRIDES"),
        required=True,
        help="a name and comma-separated key=value overrides (empty string: the profile as is)",
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=480.0, help="seconds from start; configs stop after it")
    ap.add_argument("--processes", type=int, default=16)
    args = ap.parse_args(argv)
    args.start = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from components.config import load_params

    low = load_params(REPO / "params.yaml", profile=args.profile).prepare.image_size
    data_file = "/dev/shm/gpu_sweep.npz"
    with mp.get_context("spawn").Pool(args.processes) as pool:
        splits = {s: load_split(args.root, args.dataset, s, low, pool) for s in ("train", "val", "test")}
    arrays = {f"{s}_{k}": v for s, part in splits.items() for k, v in part.items()}
    np.savez(data_file, **arrays)
    print(
        f"data: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())} in {time.time() - args.start:.0f} s",
        flush=True,
    )
    ctx = mp.get_context("spawn")
    procs = []
    for name, ov in args.config:
        overrides = [o for o in ov.split(",") if o]
        p = ctx.Process(target=run_config, args=(name, overrides, args, data_file))
        p.start()
        procs.append(p)
    for p in procs:
        p.join()
    print(json.dumps({"exit_codes": [p.exitcode for p in procs]}))


if __name__ == "__main__":
    main()
