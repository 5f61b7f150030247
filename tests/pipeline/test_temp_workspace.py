"""Inside a DVC temporary workspace (``dvc exp run --temp``): where a relative ``storage.root`` points."""

from __future__ import annotations

from pathlib import Path

from components.config import load_params
from components.storage import Store

REPO = Path(__file__).resolve().parents[2]


def test_storage_root_is_the_workspace_s_once_dvc_checked_the_dataset_out(tmp_path, monkeypatch):
    project = tmp_path / "project"
    temp = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp.mkdir(parents=True)
    (temp / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(temp)
    params = load_params("params.yaml")
    assert params.storage.root == "data/store"  # the params say what the user wrote ...
    # ... and the store resolves it: nothing checked out, so shards and checkpoints are the project's
    assert Store.from_config(params.storage).root == str(project / "data" / "store")
    (temp / "data" / "store" / "datasets" / "default").mkdir(parents=True)  # prepare's output, from DVC
    assert Store.from_config(params.storage).root == "data/store"
    assert Store.from_config(params.storage).anchored().root == str(temp / "data" / "store")


def test_an_s3_or_absolute_root_is_taken_as_written(tmp_path, monkeypatch):
    temp = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp.mkdir(parents=True)
    monkeypatch.chdir(temp)
    for root in ("s3://bucket/prefix", str(tmp_path / "elsewhere")):
        store = Store.from_config(load_params(REPO / "params.yaml", [f"storage.root={root}"]).storage)
        assert store.root == root and store.anchored().root == root
