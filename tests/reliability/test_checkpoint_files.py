"""Item 6 without Ray: a sha256 next to every training checkpoint, and the newest intact one wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.checkpoint import CheckpointError, read_verified, write_with_hash
from components.training.loop import STATE_FILE, newest_state


def save(root: Path, epoch: int, payload: bytes) -> Path:
    d = root / f"epoch_{epoch:04d}"
    d.mkdir(parents=True)
    write_with_hash(d, STATE_FILE, payload)
    return d / STATE_FILE


def state_bytes(epoch: int) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"epoch": epoch, "weights": torch.arange(1000.0) * epoch}, buf)
    return buf.getvalue()


def test_newest_intact_checkpoint_by_epoch_on_disk_skipping_damaged_ones(tmp_path):
    for e in (1, 2, 10):
        save(tmp_path, e, state_bytes(e))
    (tmp_path / "epoch_0003").mkdir()
    (tmp_path / "epoch_0003" / STATE_FILE).write_bytes(b"an older attempt's broken file")
    redone = tmp_path / "epoch_0003.r1"  # the same epoch trained again by a later attempt
    redone.mkdir()
    write_with_hash(redone, STATE_FILE, state_bytes(3))
    (tmp_path / "epoch_0009").mkdir()  # a folder whose upload never finished: no state.pt at all
    newest = tmp_path / "epoch_0010" / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:500])  # truncated, as by a full disk or a killed copy

    folder, state, problems = newest_state(str(tmp_path))
    assert folder == str(redone) and state["epoch"] == 3  # by number: 10 > 9 > 3.r1 > 3
    assert len(problems) == 2
    assert str(newest) in problems[0] and "does not match" in problems[0] and "truncated" in problems[0]
    assert "epoch_0009" in problems[1]

    with pytest.raises(CheckpointError, match=f"{newest}: sha256 .* does not match"):
        read_verified(str(newest))


def test_a_checkpoint_without_hash_is_loaded_if_it_loads(tmp_path):
    """Checkpoints written before hashes existed still resume; a broken one of them is skipped."""
    (tmp_path / "epoch_0001").mkdir()
    (tmp_path / "epoch_0001" / STATE_FILE).write_bytes(state_bytes(1))
    (tmp_path / "epoch_0002").mkdir()
    (tmp_path / "epoch_0002" / STATE_FILE).write_bytes(state_bytes(2)[:300])
    folder, state, problems = newest_state(str(tmp_path))
    assert state["epoch"] == 1 and folder.endswith("epoch_0001")
    assert "epoch_0002/state.pt: cannot be loaded" in problems[0]
    assert newest_state(str(tmp_path / "nothing-here")) == (None, None, [])
