"""The promotion rule (``components.evaluation.promotion.decide``) without an MLflow server."""

from __future__ import annotations

import pytest

from components.evaluation.promotion import check, decide


def unused() -> float:
    raise AssertionError("the champion's score was not needed here")


def test_first_version_that_beats_the_composite_becomes_champion():
    d = decide(700.0, 746.0, "1", None, unused)
    assert d.promoted and d.reason == "no champion yet"


def test_a_model_worse_than_the_composite_is_never_champion():
    d = decide(747.2, 746.0, "1", None, unused)
    assert not d.promoted and "does not beat the unharmonized composite's 746.0000" in d.reason
    assert decide(747.2, 746.0, "1", None, unused, beat_composite=False).promoted


@pytest.mark.parametrize(
    ("value", "champion_value", "mode", "promoted"),
    [(600.0, 650.0, "min", True), (650.0, 650.0, "min", False), (700.0, 650.0, "min", False),
     (31.0, 30.0, "max", True), (30.0, 30.0, "max", False)],
)  # fmt: skip
def test_challenger_must_strictly_beat_the_champion(value, champion_value, mode, promoted):
    composite = 800.0 if mode == "min" else 20.0
    d = decide(value, composite, "3", "2", lambda: champion_value, "psnr" if mode == "max" else "fmse", mode)
    assert d.promoted is promoted
    assert d.previous_champion == "2" and d.champion_value == champion_value
    assert "vs champion v2" in d.reason


def test_the_champion_itself_is_not_re_scored():
    d = decide(600.0, 800.0, "2", "2", unused)
    assert not d.promoted and d.reason == "already the champion"


def test_an_unscored_champion_gives_way():
    d = decide(600.0, 800.0, "3", "2", lambda: None)
    assert d.promoted and "unscored" in d.reason


@pytest.mark.parametrize(("metric", "mode", "message"), [("fmse", "lowest", "register.mode='lowest'"),
                                                          ("ssim", "min", "register.metric='ssim'")])  # fmt: skip
def test_bad_settings_name_the_key(metric, mode, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check(metric, mode)
    with pytest.raises(ValueError, match=message):
        decide(1.0, 2.0, "1", None, unused, metric, mode)
