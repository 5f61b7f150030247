"""``import_model``: the authors' checkpoint format imports, registers, harmonizes, evaluates; bad files
exit 2 naming the key or the reason and register nothing. On a real MLflow server.

The authors' weights are random tensors laid out by the committed table of their keys and shapes
(``tests/rainnet_authors_keys.json``, ngf 64: the published size); the bad files are small (ngf 8)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.checkpoint import file_sha256
from components.data.iharmony4 import mask_and_real_names
from components.models.authors_keys import authors_layout
from tests.serve import helpers
from tests.serve.conftest import on_server, run_stage
from tests.test_authors_keys import committed_table, random_state

pytestmark = pytest.mark.slow  # a real MLflow server, a 54.8M-parameter generator logged and registered
TAG = uuid.uuid4().hex[:6]


def import_cli(*args: str) -> int:
    from pipeline import import_model

    return import_model.main(list(args))


def import_exit(capsys, *args: str) -> tuple[int, str]:
    """The command as a user runs it (``run_cli``): exit status and stderr."""
    from components.cli import run_cli
    from pipeline import import_model

    with pytest.raises(SystemExit) as info:
        run_cli(import_model.main, list(args))
    return info.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory) -> Path:
    """A ``net_G_last.pth`` of the authors' layout (51 tensors, 54.8M parameters), random weights."""
    state = random_state(committed_table(), seed=3)
    path = tmp_path_factory.mktemp("authors") / "net_G_last.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def imported(mlflow_server, authors_file, tmp_path_factory) -> dict:
    """The file imported twice (the second time registers nothing new)."""
    tmp = tmp_path_factory.mktemp("import")
    name = f"rainnet-authors-{TAG}"
    with on_server(mlflow_server):
        args = [str(authors_file), "--format", "rainnet-authors", "--model-name", name]
        assert import_cli(*args, "--out", str(tmp / "first.json")) == 0
        assert import_cli(*args, "--out", str(tmp / "again.json")) == 0
    first, again = (json.loads((tmp / f).read_text()) for f in ("first.json", "again.json"))
    return {"name": name, "first": first, "again": again, "uri": mlflow_server}


def test_import_is_a_tracked_registered_version(imported, authors_file):
    from mlflow import MlflowClient

    first, again, name = imported["first"], imported["again"], imported["name"]
    assert first["new_version"] and first["version"] == 1 and first["model_uri"] == f"models:/{name}/1"
    assert not again["new_version"] and again["version"] == 1 and again["run_id"] == first["run_id"]
    with on_server(imported["uri"]):
        client = MlflowClient()
        v = client.get_model_version(name, "1")
        assert v.tags["source"] == "authors" and v.tags["source_format"] == "rainnet-authors"
        assert not v.aliases  # no alias moves at import: the promotion rule is register's
        assert len(client.search_model_versions(f"name = '{name}'")) == 1
        run = client.get_run(first["run_id"])
        assert client.get_experiment(run.info.experiment_id).name == "harmonization-import"
        p = run.data.params
        assert p["source_format"] == "rainnet-authors" and p["file_sha256"] == file_sha256(authors_file)
        assert (p["ngf"], p["depth"], p["image_size"]) == ("64", "8", "256")
        assert v.run_id == run.info.run_id and run.data.tags["source"] == "authors"


@pytest.fixture(scope="module")
def few_test_images(test_subset, tmp_path_factory) -> Path:
    """The first four triplets of the test subset, in the same layout: the 54.8M-parameter generator on
    CPU costs seconds an image, and four random-weights outputs show the loss to the composite as well."""
    out = tmp_path_factory.mktemp("few") / test_subset.name
    listing = test_subset / f"{test_subset.name}_test.txt"
    names = [n for n in listing.read_text().split() if n][:4]
    for name in names:
        mask, real = mask_and_real_names(name)
        for folder, file in (("composite_images", name), ("masks", mask), ("real_images", real)):
            (out / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(test_subset / folder / file, out / folder / file)
    (out / listing.name).write_text("\n".join(names) + "\n")
    return out


def test_imported_version_harmonizes_evaluates_and_registers(imported, photos, photo_ids, few_test_images, tmp_path):
    """``harmonize -m models:/<name>/1`` at full resolution, then evaluate and register: the imported
    version is scored like any other and, as random weights, does not become champion."""
    from pipeline import evaluate, harmonize, register

    name = imported["name"]
    real = np.asarray(Image.open(photos / "photos" / f"{photo_ids[0]}.jpg").convert("RGB"))[:, :448]
    mask = np.asarray(Image.open(photos / "masks" / f"{photo_ids[0]}.png").convert("L"))[:, :448] > 127
    comp = helpers.recolour(real, mask, np.random.default_rng(0))
    Image.fromarray(comp).save(tmp_path / "comp.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    with on_server(imported["uri"]):
        args = [str(tmp_path / "comp.png"), str(tmp_path / "mask.png"), "-o", str(out), "-m", f"models:/{name}/1"]
        assert harmonize.main(args) == 0
        got = np.asarray(Image.open(out).convert("RGB"))
        assert got.shape == comp.shape  # native size, not the network's 256
        assert np.array_equal(got[~mask], comp[~mask])  # background byte-identical
        assert not np.array_equal(got[mask], comp[mask])

        ev = tmp_path / "eval"
        run_stage(
            evaluate.main,
            f"evaluate.model=models:/{name}/1",
            f"evaluate.data={few_test_images}",
            f"evaluate.per_image_out={ev / 'eval.csv'}",
            f"evaluate.summary_out={ev / 'eval.json'}",
            f"evaluate.summary_md={ev / 'eval.md'}",
            f"evaluate.showcase_out={ev / 'showcase.png'}",
        )
        summary = json.loads((ev / "eval.json").read_text())
        assert summary["model_run_id"] == imported["first"]["run_id"] and summary["generator"]["depth"] == 8
        run_stage(
            register.main,
            f"register.model_name={name}",
            f"register.eval_in={ev / 'eval.json'}",
            f"register.out={ev / 'register.json'}",
            f"register.card_out={ev / 'card.md'}",
        )
        result = json.loads((ev / "register.json").read_text())
        from mlflow import MlflowClient

        v = MlflowClient().get_model_version(name, "1")
    assert result["version"] == 1 and not result["new_version"]  # the imported version, scored
    h, c = summary["harmonized"]["overall"]["fmse"], summary["composite"]["overall"]["fmse"]
    assert h > c  # random weights do worse than leaving the composite alone ...
    assert not result["promoted"] and "champion" not in result["aliases"]  # ... so the rule keeps them out
    assert "does not beat the unharmonized composite" in result["reason"]
    assert float(v.tags["test_fmse"]) == pytest.approx(h, rel=1e-5) and v.tags["source"] == "authors"


class _Code:
    """Unpickling this runs a shell command: what a weights-only load must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(root: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (file, extra CLI args, what stderr must say)."""
    small = random_state(authors_layout(8, 3), seed=5)
    files: dict[str, tuple[Path, list[str], str]] = {}

    def save(name: str, obj, args: list[str], message: str) -> None:
        path = root / f"{name}.pth"
        torch.save(obj, path)
        files[name] = (path, args, message)

    from components.models.dih import dih

    save("another-network", dih(image_size=64).state_dict(), [], "no key 'model_layer0.weight'")
    wrong = dict(small)
    wrong["unet_block.submodule.down.1.weight"] = torch.zeros(64, 64, 3, 3)
    save("wrong-shape", wrong, ["--ngf", "8"], "key 'unet_block.submodule.down.1.weight': shape (64, 64, 3, 3)")
    save("other-ngf", small, [], "key 'model_layer0.weight': shape (8, 3, 4, 4), expected (64, 3, 4, 4)")
    save("four-channels", random_state(authors_layout(8, 4)), ["--ngf", "8"], "8 with 4 input channels")
    save("pickled-code", {"model_layer0.weight": _Code(root / "pwned")}, [], "a pickle with code, refused")
    full = root / "full.pth"
    torch.save(small, full)
    cut = root / "truncated.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    files["truncated"] = (cut, ["--ngf", "8"], "not a weights-only torch file")
    return files


@pytest.mark.parametrize(
    "case", ["another-network", "wrong-shape", "other-ngf", "four-channels", "pickled-code", "truncated"]
)
def test_a_bad_checkpoint_exits_2_naming_the_key_and_registers_nothing(mlflow_server, tmp_path, capsys, case):
    from mlflow import MlflowClient

    path, args, message = _bad_files(tmp_path)[case]
    name, experiment = f"rainnet-bad-{TAG}", f"import-bad-{TAG}"
    with on_server(mlflow_server):
        code, err = import_exit(
            capsys, str(path), "--format", "rainnet-authors", "--model-name", name, "--experiment", experiment, *args
        )
        client = MlflowClient()
        assert client.search_model_versions(f"name = '{name}'") == []
        assert client.get_experiment_by_name(experiment) is None  # no run, not even an experiment
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0], err
    assert not (tmp_path / "pwned").exists()  # the pickled command never ran
