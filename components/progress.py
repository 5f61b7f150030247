"""Training progress the user sees on the driver: a few lines within each epoch and one line per epoch
with the validation numbers and the ETA.

Printed by rank 0 (flushed): Ray forwards worker stdout to the driver (``log_to_driver``), so the lines
reach the terminal of ``python -m pipeline.train`` and of ``ray job submit`` alike.
"""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Progress of epochs ``first_epoch`` .. ``total_epochs`` with ``steps`` steps each."""

    def __init__(self, first_epoch: int, total_epochs: int, steps: int, enabled: bool = True, lines: int = 4):
        self.first, self.total, self.steps, self.enabled = first_epoch, total_epochs, steps, enabled
        self.every = max(1, steps // max(1, lines))
        self.start = time.perf_counter()
        self.epoch_start = self.start

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def begin_epoch(self) -> None:
        self.epoch_start = time.perf_counter()

    def step(self, epoch: int, index: int, losses: dict[str, float]) -> None:
        """After step ``index`` (0-based) of ``epoch``: a line every ``steps / lines`` steps."""
        done = index + 1
        if done % self.every and done != self.steps:
            return
        rate = done / max(time.perf_counter() - self.epoch_start, 1e-9)
        loss = ", ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items()))
        self._print(
            f"epoch {epoch}/{self.total} [{bar(done / self.steps)}] step {done}/{self.steps}"
            f" ({rate:.1f} steps/s){': ' + loss if loss else ''}"
        )

    def end_epoch(self, row: dict) -> str:
        """The epoch line: validation metrics beside the composite's, speed, elapsed and ETA; returned too."""
        epoch = int(row["epoch"])
        elapsed = time.perf_counter() - self.start
        left = self.total - epoch
        eta = elapsed / max(epoch - self.first + 1, 1) * left
        text = (
            f"epoch {epoch}/{self.total} done in {duration(time.perf_counter() - self.epoch_start)}: "
            f"val fMSE {row['val_fmse']:.2f} (composite {row['composite_fmse']:.2f}), "
            f"PSNR {row['val_psnr']:.2f} dB (composite {row['composite_psnr']:.2f}); "
            f"{row['images_per_s']:.0f} img/s; elapsed {duration(elapsed)}, "
            + (f"ETA {duration(eta)}" if left else "finished")
        )
        self._print(text)
        return text


def bar(fraction: float, width: int = 20) -> str:
    """``#########-----------``: a text bar that survives Ray's log forwarding (no carriage returns)."""
    full = round(max(0.0, min(1.0, fraction)) * width)
    return "#" * full + "-" * (width - full)
