"""The sweep plan without Ray: variants, distinct networks at small sizes, trial params, the results files."""

from __future__ import annotations

import csv

import pytest

from components.config import ConfigError, load_params
from components.errors import UserError
from components.models import build_model
from components.models.rainnet import PLACEMENTS
from components.training.ablation import plan, report
from tests.train.conftest import REPO, TINY


def params(*extra: str):
    return load_params(REPO / "params.yaml", [*TINY, *extra])


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_effective_placement_matches_the_layers_the_network_builds(size):
    for name in PLACEMENTS:
        net = build_model({"name": "rainnet", "placement": name, "ngf": 1, "image_size": size})
        layers = net.slot_layers()
        eff = plan.effective_placement(name, size)
        assert [i + 1 for i, c in enumerate(eff) if c != "."] == [s for s, ls in layers.items() if ls]
        kinds = {s: {type(m).__name__ for m in ls} for s, ls in layers.items() if ls}
        for s, k in kinds.items():
            assert k == ({"RAIN"} if eff[s - 1] == "R" else {"InstanceNorm2d"})


def test_all_of_table_1_at_256_is_17_networks_and_fewer_below():
    everything = params("ablate.placements=null")
    assert [v.placement for v in plan.plan(everything, 256)] == list(PLACEMENTS)
    at32 = plan.plan(everything, 32)
    merged = {v.id: v.stands_for for v in at32 if len(v.stands_for) > 1}
    assert merged["rainnet-rain-3"] == [
        "rainnet-rain-3",
        "rainnet-rain-4",
        "rainnet-rain-5",
        "rainnet-rain-6",
    ]
    assert merged["rainnet-rain-decoder-3"] == ["rainnet-rain-decoder-3", "rainnet-rain-decoder-4"]
    assert sum(len(v.stands_for) for v in at32) == 17
    assert len({(v.effective, v.head) for v in at32}) == len(at32)
    at64 = plan.plan(everything, 64)
    assert [v.stands_for for v in at64 if len(v.stands_for) > 1] == [
        ["rainnet-rain-4", "rainnet-rain-5", "rainnet-rain-6"]
    ]
    types = {v.placement: v.type for v in plan.plan(everything, 256)}
    assert types["rain-decoder-2"] == "I" and types["rain-5"] == "II" and types["rain-inner-4"] == "III"
    assert types["baseline"] == types["all-rain"] == "-"


def test_families_heads_and_trial_params():
    p = params("ablate.placements=[baseline, RRRRRRRRRRRRRR]", "ablate.families=[rainnet, dih, dih_rain]",
               "ablate.heads=[image, pct]", "ablate.epochs=3", "ablate.cpus_per_worker=1")  # fmt: skip
    vs = plan.plan(p, 64)
    # the I/R string of all-rain is the same network as the name: one variant per head for it
    assert [v.id for v in vs] == [
        "rainnet-baseline-image", "rainnet-RRRRRRRRRRRRRR-image", "rainnet-baseline-pct",
        "rainnet-RRRRRRRRRRRRRR-pct", "dih-image", "dih-pct", "dih_rain-image", "dih_rain-pct",
    ]  # fmt: skip
    dih = next(v for v in vs if v.id == "dih-pct")
    tp = plan.trial_params(p, dih)
    assert tp.model.generator["name"] == "dih" and "placement" not in tp.model.generator
    assert "attention" not in tp.model.generator and tp.model.generator["head"] == "pct"
    assert tp.train.epochs == 3 and tp.train.experiment == "harmonization-ablation"
    assert tp.train.run_name == "dih-pct" and tp.train.cpus_per_worker == 1
    assert p.train.experiment == "harmonization-train"  # the base params are not touched
    with pytest.raises(UserError, match="unknown placement"):
        plan.plan(params("ablate.placements=[rain-9]"), 64)
    with pytest.raises(UserError, match="unknown family"):
        plan.plan(params("ablate.families=[unet]"), 64)


def test_results_files(tmp_path):
    vs = plan.plan(params("ablate.placements=[baseline, rain-1, rain-decoder-1]"), 32)
    hist = [
        {"epoch": e, "val_psnr": 20.0 + e, "val_mse": 100.0 - e, "val_fmse": 900.0 - e} for e in (1, 2, 3)
    ]
    rows = [report.result_row(vs[0], "FINISHED", hist, "r0"), report.result_row(vs[1], "FAILED", hist[:1],
            "r1", "RuntimeError: boom"), report.result_row(vs[2], "FINISHED", hist, "r2")]  # fmt: skip
    assert rows[0]["best_psnr"] == 23.0 and rows[0]["best_psnr_epoch"] == 3 and rows[0]["best_fmse"] == 897.0
    report.write_csv(str(tmp_path / "a.csv"), rows)
    with open(tmp_path / "a.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["status"] for r in got] == ["FINISHED", "FAILED", "FINISHED"]
    info = dict(sweep="s", key="s-1", parent_run_id="p", experiment="e", dataset="d", image_size=32,
                epochs=3, seed=0, command="python -m pipeline.ablate")  # fmt: skip
    md = report.markdown(rows, info, {"psnr": 19.0, "mse": 120.0, "fmse": 1000.0})
    assert "| composite (no harmonization) |" in md and "FAILED (RuntimeError: boom)" in md
    assert report.figures(vs, {v.id: hist for v in vs}).startswith(b"\x89PNG")


def panel_titles(placements: str, families: str = "[rainnet]") -> list[str]:
    vs = plan.plan(params(f"ablate.placements={placements}", f"ablate.families={families}"), 64)
    return [title for title, _, _ in report.figure_panels(vs, {})]


def test_the_figure_has_a_panel_per_kind_the_sweep_ran():
    """The default sweep (baseline, rain-decoder, all-rain) draws one panel, Type I, not three figures that
    say nothing finished; the references are dashed in every placement panel."""
    vs = plan.plan(params("ablate.placements=[baseline, rain-decoder, all-rain]"), 64)
    ((title, curves, refs),) = report.figure_panels(vs, {})
    assert title.startswith("Type I ") and list(curves) == ["rainnet-rain-decoder"]
    assert set(refs) == {"rainnet-baseline", "rainnet-all-rain"}
    assert panel_titles("[rain-1, rain-inner-3]") == [
        "Type II placements: validation PSNR", "Type III placements: validation PSNR"
    ]
    assert panel_titles("[baseline]", "[rainnet, dih, dih_rain]") == [
        "DIH vs DIH + RAIN: validation PSNR"
    ]
    assert panel_titles("[baseline, all-rain]") == ["RainNet: validation PSNR"]


def test_fractional_gpus_pack_several_trials_on_one_gpu():
    """``ablate.gpus_per_worker: 0.25``: every trial's Ray Train workers ask for a quarter of a GPU, so
    Ray places four trials of small networks on one GPU; the train section is left as it was."""
    from components.training import launch

    p = params("ablate.use_gpu=true", "ablate.gpus_per_worker=0.25", "ablate.max_concurrent_trials=4",
               "ablate.cpus_per_worker=1")  # fmt: skip
    variants = plan.plan(p, 64)
    for v in variants:
        sc = launch.scaling_config(plan.trial_params(p, v).train)
        assert sc.use_gpu and sc.num_workers == 1
        assert sc.total_resources == {"CPU": 1.0, "GPU": 0.25}
    per_trial = launch.scaling_config(plan.trial_params(p, variants[0]).train).total_resources["GPU"]
    assert p.ablate.max_concurrent_trials * per_trial == 1.0  # four concurrent trials fill one GPU
    assert not p.train.use_gpu and p.train.gpus_per_worker == 1.0
    cpu = launch.scaling_config(plan.trial_params(params(), variants[0]).train)
    assert not cpu.use_gpu and "GPU" not in cpu.total_resources
    with pytest.raises(
        ConfigError, match="ablate.gpus_per_worker=0.0: expected a finite number greater than 0"
    ):
        params("ablate.gpus_per_worker=0")
