"""Inside a DVC temporary workspace (``dvc exp run --temp``): where a relative ``storage.root`` points."""

from __future__ import annotations

from pathlib import Path

from components.config import load_params

REPO = Path(__file__).resolve().parents[2]


def test_storage_root_is_the_workspace_s_once_dvc_checked_the_dataset_out(tmp_path, monkeypatch):
    project = tmp_path / "project"
    temp = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp.mkdir(parents=True)
    (temp / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(temp)
    # nothing checked out: shards and checkpoints are the project's
    assert load_params("params.yaml").storage.root == str(project / "data" / "store")
    (temp / "data" / "store" / "datasets" / "default").mkdir(parents=True)  # prepare's output, from DVC
    assert load_params("params.yaml").storage.root == "data/store"
