"""The promotion rule: does a newly evaluated model version become the ``champion``?

Pure (no MLflow), so the rule is tested without a server; ``components.stages.register`` applies it.
A version is promoted only when it strictly beats the champion on the same test set (a tie keeps the
champion) and, with ``beat_composite``, also beats the unharmonized composite there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

METRICS = ("mse", "psnr", "fmse", "fpsnr")
MODES = ("min", "max")


@dataclass
class Decision:
    promoted: bool
    reason: str
    previous_champion: str | None = None
    champion_value: float | None = None
    aliases: list[str] = field(default_factory=list)


def rule_text(metric: str, mode: str) -> str:
    """The rule in words, for the model card."""
    return f"{'lower' if mode == 'min' else 'higher'} overall test {metric} wins"


def check(metric: str, mode: str) -> None:
    """``ValueError`` naming the bad setting (``register.metric`` / ``register.mode``)."""
    check_mode(mode)
    if metric not in METRICS:
        raise ValueError(f"register.metric={metric!r}: not an evaluation metric ({', '.join(METRICS)})")


def check_mode(mode: str) -> None:
    """The one check of ``register.mode``: ``ValueError`` naming it unless ``min`` or ``max``."""
    if mode not in MODES:
        raise ValueError(f"register.mode={mode!r}: expected min or max")


def better(new: float | None, old: float | None, mode: str) -> bool:
    """Strict improvement of ``new`` over ``old`` (a tie keeps the champion; a non-finite ``new`` never
    wins, a non-finite ``old`` always loses)."""
    check_mode(mode)
    if new is None or not math.isfinite(new):
        return False
    if old is None or not math.isfinite(old):
        return True
    return new < old if mode == "min" else new > old


def decide(
    value: float,
    composite: float,
    version: str,
    champion: str | None,
    champion_value: Callable[[], float | None],
    metric: str = "fmse",
    mode: str = "min",
    beat_composite: bool = True,
) -> Decision:
    """The decision for ``version`` scoring ``value`` (the composite scores ``composite``) when
    ``champion`` is the current champion's version (None: there is none). ``champion_value`` gives the
    champion's score on the same test set; it is called only when the comparison needs it (it may
    re-evaluate the champion)."""
    check(metric, mode)
    if beat_composite and not better(value, composite, mode):
        return Decision(
            False, f"{metric} {value:.4f} does not beat the unharmonized composite's {composite:.4f}"
        )
    if champion is None:
        return Decision(True, "no champion yet")
    if str(champion) == str(version):
        return Decision(False, "already the champion", champion, value)
    old = champion_value()
    if old is None:
        return Decision(True, f"champion v{champion} unscored", champion, None)
    win = better(value, old, mode)
    return Decision(win, f"{metric} {value:.4f} vs champion v{champion} {old:.4f}", champion, old)
