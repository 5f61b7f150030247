"""``evaluate`` on the iHarmony4 layout (local and s3://) and on prepare shards, checked against numpy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import evaluate
from tests.serve.conftest import run_stage


def hand_metrics(lh: Path, name: str) -> dict:
    """MSE / PSNR / fMSE of the composite against the real, straight from the files with numpy."""
    image_id, mask_no, _ = name[:-4].rsplit("_", 2)
    comp = np.asarray(Image.open(lh / "composite_images" / name).convert("RGB"), dtype=np.float64)
    real = np.asarray(Image.open(lh / "real_images" / f"{image_id}.jpg").convert("RGB"), dtype=np.float64)
    fg = np.asarray(Image.open(lh / "masks" / f"{image_id}_{mask_no}.png").convert("L")) >= 128
    sq = (comp - real) ** 2
    mse = sq.mean()
    return {"mse": mse, "psnr": 10 * np.log10(255**2 / mse), "fmse": sq[fg].sum() / (3 * fg.sum())}


@pytest.fixture
def tracking_server(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def outputs(tmp: Path) -> list[str]:
    return [
        f"evaluate.per_image_out={tmp / 'per_image.csv'}",
        f"evaluate.summary_out={tmp / 'eval.json'}",
        f"evaluate.summary_md={tmp / 'eval.md'}",
        f"evaluate.showcase_out={tmp / 'showcase.png'}",  # never the repo's reports/
    ]


@pytest.fixture(params=["builtin", "lalonde"])
def ih_subset(request) -> Path:
    """An iHarmony4-layout test subset: from the builtin photos, and (extra tier) the shared LHarmony."""
    if request.param == "lalonde":
        return request.getfixturevalue("lalonde") / "LHarmony"
    return request.getfixturevalue("test_subset")


def test_iharmony4_composite_row_matches_numpy(ih_subset, generators, tracking_server, tmp_path):
    lh = ih_subset
    names = (lh / f"{lh.name}_test.txt").read_text().split()
    run_stage(
        evaluate.main,
        f"evaluate.model={generators['strong']['path']}",
        f"evaluate.data={lh}",
        *outputs(tmp_path),
    )
    summary = json.loads((tmp_path / "eval.json").read_text())
    # Scores are at the files' native 256x256 whatever the network's size (32 here): numpy alone gives
    # the composite's truth; the paper protocol (at 32x32) is reported apart.
    assert summary["image_size"] == 32 and summary["resolution"] == "native"
    hand = {n: hand_metrics(lh, n) for n in names}
    comp = summary["composite"]["overall"]
    assert comp["n"] == len(names) >= 18
    for key in ("mse", "psnr", "fmse"):
        assert comp[key] == pytest.approx(np.mean([h[key] for h in hand.values()]), rel=1e-9)
    assert list(summary["composite"]["by_subset"]) == [lh.name]
    assert sum(g["n"] for g in summary["harmonized"]["by_fg_ratio"].values()) == len(names)

    with open(tmp_path / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:10] == [
        "path", "subset", "method", "width", "height", "fg_ratio", "mse", "psnr", "fmse", "fpsnr",
    ]  # fmt: skip
    assert {"paper_fmse", "paper_composite_fmse"} <= set(rows[0])
    assert len(rows) == len(names)
    assert {(r["width"], r["height"]) for r in rows} == {("256", "256")}
    for r in rows[:10]:
        name = r["path"].rsplit("/", 1)[-1]
        assert float(r["composite_fmse"]) == pytest.approx(hand[name]["fmse"], rel=1e-5)

    md = (tmp_path / "eval.md").read_text()
    first = next(line for line in md.splitlines() if line.startswith("| composite"))
    assert f"{comp['fmse']:.2f}" in first  # the composite is the first row of the table
    paper = summary["paper"]["composite"]["overall"]
    assert paper["n"] == len(names) and paper["fmse"] != pytest.approx(comp["fmse"])  # at 32x32: apart

    from mlflow import MlflowClient

    run = MlflowClient().get_run(summary["eval_run_id"])
    exp = MlflowClient().get_experiment(run.info.experiment_id)
    assert exp.name == "harmonization-eval"
    assert run.info.run_name == f"eval-rainnet-rain-decoder-{lh.name}"
    assert run.data.metrics["test_fmse"] == pytest.approx(summary["harmonized"]["overall"]["fmse"])
    assert run.data.metrics["composite_fmse"] == pytest.approx(comp["fmse"])
    assert run.data.metrics[f"test_fmse.{lh.name}"] == pytest.approx(summary["harmonized"]["overall"]["fmse"])
    assert run.data.tags["test_set"] == summary["test_set"]


def test_s3_folder_and_prepare_shards_give_the_same_numbers(
    test_subset, generators, tracking_server, s3_bucket, tmp_path
):
    """The same 12 images as an iHarmony4 folder on S3 and as prepare test shards: identical scores."""
    import boto3

    from components.data.dataset import DatasetWriter
    from components.storage import Store

    lh = test_subset
    names = (lh / f"{lh.name}_test.txt").read_text().split()[:12]
    client = boto3.client("s3")
    bucket = s3_bucket[len("s3://") :]
    writer = DatasetWriter(Store(str(tmp_path / "store")), "tiny", 100, 16)
    lines = []
    for name in names:
        image_id, mask_no, _ = name[:-4].rsplit("_", 2)
        files = {
            "composite": f"composite_images/{name}",
            "mask": f"masks/{image_id}_{mask_no}.png",
            "real": f"real_images/{image_id}.jpg",
        }
        for rel in files.values():
            client.put_object(Bucket=bucket, Key=f"ih/Mini/{rel}", Body=(lh / rel).read_bytes())
        lines.append(name)
        row = {k: _png(lh / rel, "L" if k == "mask" else "RGB") for k, rel in files.items()}
        row.update(sample_id=name, scene_id=image_id, subset="Mini", split="test", source="builtin",
                   method="x", height=256, width=256, fg_ratio=0.1, fg_mse=0.0)  # fmt: skip
        writer.add(row)
    writer.publish()
    client.put_object(Bucket=bucket, Key="ih/Mini/Mini_test.txt", Body="\n".join(lines).encode())

    model = f"evaluate.model={generators['strong']['path']}"
    run_stage(evaluate.main, model, f"evaluate.data={s3_bucket}/ih", *outputs(tmp_path / "s3"))
    run_stage(
        evaluate.main,
        model,
        f"storage.root={tmp_path / 'store'}",
        "prepare.name=tiny",
        *outputs(tmp_path / "sh"),
    )
    a = json.loads((tmp_path / "s3" / "eval.json").read_text())
    b = json.loads((tmp_path / "sh" / "eval.json").read_text())
    assert a["image_size"] == b["image_size"] == 32  # the model's training size by default
    assert a["composite"]["overall"]["n"] == b["composite"]["overall"]["n"] == 12
    for key in ("composite", "harmonized"):
        assert a[key]["overall"] == pytest.approx(b[key]["overall"])
    assert a["data"] == f"{s3_bucket}/ih" and b["data"] == "shards:tiny"


def _png(path: Path, mode: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.open(path).convert(mode).save(buf, format="PNG")
    return buf.getvalue()
