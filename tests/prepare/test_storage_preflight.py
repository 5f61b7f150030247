"""``prepare`` fails before its compute when it cannot write its storage root, and cleans up after itself.

Each fault is real: a root that is a file, a read-only folder (root's ``CAP_DAC_OVERRIDE`` dropped with
``setpriv`` when the tests run as root, so the folder's mode is obeyed), a bucket that does not exist on
the moto server, and a full disk mid-run (a file-size limit, ``RLIMIT_FSIZE``, on the prepare process:
its writes fail with ``EFBIG`` once a shard is bigger than the limit, as they would with ``ENOSPC``).
The photo source is a folder that does not exist: a storage error instead of that one shows the root
was checked before any source was read.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from components.data.dataset import open_dataset
from components.errors import UserError
from components.evaluation.scoring import shard_samples
from components.storage import Store
from tests.prepare.conftest import REPO, run_prepare

FEW = [
    "prepare.image_size=32", "prepare.crops_per_photo=2", "prepare.composites_per_photo=1",
    "prepare.sources=[{kind: builtin, limit: 8}]", "prepare.rows_per_shard=4",
]  # fmt: skip
NO_SOURCE = "prepare.sources=[{kind: photos_masks, path: /no/such/photos}]"


def prepare_process(out: Path, root: str, *overrides: str, prefix=(), preexec_fn=None):
    args = [*prefix, sys.executable, "-m", "pipeline.prepare", "--params", str(REPO / "params.yaml"), "--no-progress"]
    for s in (
        f"storage.root={root}", f"prepare.card={out / 'card.json'}", f"prepare.manifest={out / 'manifest.json'}",
        f"prepare.samples_png={out / 'samples.png'}", *overrides,
    ):  # fmt: skip
        args += ["-S", s]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=preexec_fn)


def test_a_root_that_is_a_file_fails_before_any_source_is_read(tmp_path):
    root = tmp_path / "root"
    root.write_text("not a folder")
    with pytest.raises(UserError, match=rf"storage.root={root}: {root} is a file, not a folder"):
        run_prepare(tmp_path, NO_SOURCE, root=str(root))
    assert not (tmp_path / "manifest.json").exists()


def test_a_read_only_root_fails_before_any_source_is_read(tmp_path):
    root = tmp_path / "readonly"
    root.mkdir()
    root.chmod(0o555)
    prefix = ()
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it ignore the mode
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux): no way to make a folder read-only")
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    try:
        res = prepare_process(tmp_path, str(root), NO_SOURCE, prefix=prefix)
    finally:
        root.chmod(0o755)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: storage.root={root}: cannot write under {root / 'datasets'}: "), last
    assert "Traceback" not in res.stderr and list(root.iterdir()) == []


def test_a_missing_bucket_is_said_by_prepare_and_by_the_readers(moto_endpoint, tmp_path):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(UserError, match=rf"storage.root=s3://{bucket}/store: bucket '{bucket}' does not exist"):
        run_prepare(tmp_path, NO_SOURCE, root=f"s3://{bucket}/store")
    store = Store(f"s3://{bucket}/store")
    for read in (lambda: open_dataset(store, "default"), lambda: shard_samples(store, "default")):  # train, evaluate
        with pytest.raises(UserError, match=f"bucket '{bucket}' does not exist"):
            read()


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_mid_run_fails_clearly_and_leaves_nothing_behind(tmp_path):
    root = tmp_path / "store"
    first = run_prepare(tmp_path / "a", *FEW, root=str(root))
    folder = root / "datasets" / "default"

    # 4 rows of 32-px train triplets fit in 64 kB; the test split's native-size shards do not
    res = prepare_process(tmp_path / "b", str(root), *FEW, "prepare.seed=1", preexec_fn=_limit_file_size(64 << 10))
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: prepare: writing {folder}/v-") and "File too large" in last, last
    assert "nothing was published" in last and "Traceback" not in res.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted([first["version"], "manifest.json"])  # no leftovers
    assert open_dataset(Store(str(root)), "default").version == first["version"]  # the published one, whole

    second = run_prepare(tmp_path / "c", *FEW, "prepare.seed=1", root=str(root))  # nothing blocks the next run
    assert json.loads((folder / "manifest.json").read_text()) == second
    assert sorted(p.name for p in folder.iterdir()) == sorted([second["version"], "manifest.json"])
