"""The driver's training progress lines (components/progress.py)."""

from __future__ import annotations

import re

from components.progress import Progress, bar, duration

ROW = {
    "val_fmse": 700.0,
    "composite_fmse": 729.3,
    "val_psnr": 31.0,
    "composite_psnr": 30.7,
    "images_per_s": 330.0,
}


def test_lines_within_and_after_each_epoch(capsys):
    p = Progress(first_epoch=2, total_epochs=3, steps=8, lines=4)
    for epoch in (2, 3):
        p.begin_epoch()
        for i in range(8):
            p.step(epoch, i, {"loss_l1": 0.5})
        p.end_epoch({"epoch": epoch, **ROW})
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if " step " in line]
    assert [re.search(r"step (\d+)/8", line).group(1) for line in steps] == ["2", "4", "6", "8"] * 2
    assert steps[-1].startswith("epoch 3/3 [####################] step 8/8") and "loss_l1 0.5" in steps[-1]
    ends = [line for line in lines if " done in " in line]
    assert len(ends) == 2
    assert ends[0].startswith("epoch 2/3 done in ") and re.search(r"ETA \d+ s$", ends[0])
    assert "val fMSE 700.00 (composite 729.30), PSNR 31.00 dB (composite 30.70); 330 img/s" in ends[0]
    assert ends[1].startswith("epoch 3/3 done in ") and ends[1].endswith("finished")


def test_only_rank_zero_prints(capsys):
    p = Progress(1, 1, 2, enabled=False)
    p.step(1, 1, {})
    assert p.end_epoch({"epoch": 1, **ROW}).endswith("finished")
    assert capsys.readouterr().out == ""


def test_durations_and_bar():
    assert [duration(s) for s in (0.4, 42, 185, 3720)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]
    assert bar(0.5, 10) == "#####-----" and bar(2.0, 4) == "####"
