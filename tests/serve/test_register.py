"""``register``: versions, tags, model card, promotion by alias, idempotency; on a real MLflow server."""

from __future__ import annotations

import pytest

from components.evaluation.promotion import better
from components.tracking.registry import registered_name
from tests.serve.conftest import DATASET_HASH


def test_promotion_and_idempotency(registry_flow):
    from mlflow import MlflowClient

    client = MlflowClient()
    name, steps, runs = registry_flow["name"], registry_flow["steps"], registry_flow["runs"]
    first, again, win, lose = (steps[k]["register"] for k in ("first", "again", "better", "worse"))

    # The first version has no champion to beat.
    assert first["version"] == 1 and first["new_version"] and first["promoted"]
    assert first["aliases"] == ["challenger", "champion"]
    # The same run again: nothing new.
    assert again["version"] == 1 and not again["new_version"] and not again["promoted"]
    # A better model takes the champion alias; a worse one stays challenger.
    assert win["version"] == 2 and win["promoted"] and win["previous_champion"] == 1
    assert win["value"] < win["champion_value"] == pytest.approx(first["value"], rel=1e-5)  # tags keep 6 digits
    assert lose["version"] == 3 and not lose["promoted"] and lose["champion_version"] == 2
    assert lose["value"] > lose["champion_value"]

    versions = {int(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    assert sorted(versions) == [1, 2, 3]  # four registrations, three runs, three versions
    assert versions[1].run_id == runs["weak"] and versions[2].run_id == runs["strong"]
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version_by_alias(name, "challenger").version == "3"
    assert not client.get_model_version(name, "1").aliases  # the old champion keeps its version

    v2 = client.get_model_version(name, "2")
    ev = steps["better"]["eval"]
    assert float(v2.tags["test_fmse"]) == pytest.approx(ev["harmonized"]["overall"]["fmse"], rel=1e-5)
    assert v2.tags["dataset_hash"] == DATASET_HASH and v2.tags["placement"] == "rain-decoder"
    assert v2.tags["test_set"] == ev["test_set"] == steps["worse"]["eval"]["test_set"]
    assert v2.description.startswith(f"# {name} version 2")
    card = steps["better"]["card"]
    n = ev["n_images"]
    assert f"| composite (no harmonization) | overall | {n} |" in card and "## Limits" in card
    # What the version page shows first: the test numbers against the composite, then the decision.
    head = [line for line in v2.description.splitlines() if line.strip()][1:3]
    fmse, comp_fmse = ev["harmonized"]["overall"]["fmse"], ev["composite"]["overall"]["fmse"]
    assert head[0].startswith(f"Test fmse **{fmse:.2f}** (composite {comp_fmse:.2f}"), head
    assert head[1].startswith("Decision: **promoted to champion**") and "vs champion v1" in head[1], head
    assert ".md" not in card.replace("model_card.md", "")  # no design file outside the repository
    # No tag that goes stale when another version takes an alias (the page shows the live aliases).
    assert all("aliases" not in client.get_model_version(name, v).tags for v in ("1", "2", "3"))
    assert "aliases" not in client.get_run(runs["weak"]).data.tags
    assert card.index("composite (no harmonization)") < card.index(f"| {name} | overall")

    # The evaluation run links back to the training run.
    eval_run = client.get_run(ev["eval_run_id"])
    assert eval_run.data.tags["model_run_id"] == runs["strong"] == ev["model_run_id"]
    # The training run itself carries the test metrics and the decision (the run and model-version
    # compare pages read them from there), and the version says why it is champion.
    # (A run shows its latest evaluation, tagged with its test set; every evaluation stays in the history.)
    def logged(run_id: str, metric: str) -> list[float]:
        return [m.value for m in client.get_metric_history(run_id, metric)]

    h, c = ev["harmonized"]["overall"], ev["composite"]["overall"]
    for metric, value in (("test_fmse", h["fmse"]), ("test_psnr", h["psnr"]), ("test_composite_fmse", c["fmse"])):
        assert any(v == pytest.approx(value) for v in logged(runs["strong"], metric)), metric
    train_run = client.get_run(runs["strong"])
    assert {"test_set", "eval_run_id"} <= set(train_run.data.tags)
    assert train_run.data.tags["registered_model"] == name and train_run.data.tags["registered_version"] == "2"
    assert train_run.data.tags["promoted"] == "true" and v2.tags["promoted"] == "true"
    assert "vs champion v1" in v2.tags["promotion_reason"]
    weak = steps["first"]["eval"]["harmonized"]["overall"]["fmse"]
    assert any(v == pytest.approx(weak) for v in logged(runs["weak"], "test_fmse")) and weak > h["fmse"]
    assert client.get_model_version(name, "3").tags["promoted"] == "false"


def test_champion_loads_by_alias(registry_flow, tmp_path):
    """``models:/<name>@champion`` is a model the harmonizer and evaluate can use."""
    import numpy as np

    from components.inference.predictor import Predictor

    h = Predictor.from_uri(f"models:/{registry_flow['name']}@champion")
    assert h.image_size == 32 and h.info["meta"]["run_id"] == registry_flow["runs"]["strong"]
    comp = np.full((48, 64, 3), 120, np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:40, 10:50] = 255
    assert h(comp, mask).shape == (48, 64, 3)


def test_rule_and_names():
    assert better(1.0, 2.0, "min") and not better(2.0, 2.0, "min") and better(3.0, 2.0, "max")
    with pytest.raises(ValueError, match="min"):
        better(1.0, 2.0, "lowest")
    assert registered_name({"name": "rainnet"}) == "rainnet"
    assert registered_name({"name": "dih_rain"}) == registered_name({"name": "dih"}) == "dih"


def half_of(subset, root) -> str:
    """Another test set: the first half of a subset's test composites, as their own subset folder."""
    import shutil

    from components.data.iharmony4 import mask_and_real_names

    lh, sub = subset, root / "Half"
    names = (lh / f"{lh.name}_test.txt").read_text().split()
    names = names[: len(names) // 2]
    for d in ("composite_images", "masks", "real_images"):
        (sub / d).mkdir(parents=True)
    for name in names:
        mask, real = mask_and_real_names(name)
        for d, f in (("composite_images", name), ("masks", mask), ("real_images", real)):
            shutil.copyfile(lh / d / f, sub / d / f)
    (sub / "Half_test.txt").write_text("\n".join(names) + "\n")
    return str(sub)


def test_champion_is_rescored_on_a_different_test_set(registry_flow, test_subset, tmp_path):
    """A challenger scored on another test set (here half of the images) is compared with the champion
    re-scored there. (Scores are at native resolution, so another network size is not another test set.)"""
    import json

    from pipeline import evaluate, register
    from tests.serve.conftest import run_stage

    name, runs = registry_flow["name"], registry_flow["runs"]
    data = half_of(test_subset, tmp_path / "data")
    for label in ("strong", "untrained"):  # the champion's run too, to know its score there directly
        run_stage(
            evaluate.main,
            f"evaluate.model=runs:/{runs[label]}/model",
            f"evaluate.data={data}",
            f"evaluate.per_image_out={tmp_path / label / 'eval.csv'}",
            f"evaluate.summary_out={tmp_path / label / 'eval.json'}",
            f"evaluate.summary_md={tmp_path / label / 'eval.md'}",
            f"evaluate.showcase_out={tmp_path / label / 'showcase.png'}",
        )
    run_stage(
        register.main,
        f"register.model_name={name}",
        f"register.eval_in={tmp_path / 'untrained' / 'eval.json'}",
        f"register.out={tmp_path / 'register.json'}",
        f"register.card_out={tmp_path / 'card.md'}",
        "register.beat_composite=false",  # the champion-vs-challenger rule alone
    )
    out = json.loads((tmp_path / "register.json").read_text())
    strong_half = json.loads((tmp_path / "strong" / "eval.json").read_text())
    assert strong_half["n_images"] == registry_flow["steps"]["better"]["eval"]["n_images"] // 2
    assert out["test_set"] == strong_half["test_set"] != registry_flow["steps"]["better"]["eval"]["test_set"]
    assert out["champion_value"] == pytest.approx(strong_half["harmonized"]["overall"]["fmse"])
    assert out["champion_value"] != pytest.approx(registry_flow["steps"]["better"]["register"]["value"])
    assert not out["new_version"] and not out["promoted"] and out["champion_version"] == 2


def test_a_model_worse_than_the_composite_is_never_champion(registry_flow, tmp_path, capfd):
    """With ``register.beat_composite`` (the default), an untrained model that makes the composites worse
    is registered as ``challenger`` but not promoted, even with no champion to beat. Registering prints
    no MLflow warning (it registers the model the run logged, by its ``models:/<id>``)."""
    import json

    from mlflow import MlflowClient

    from pipeline import register
    from tests.serve.conftest import run_stage

    worse = registry_flow["steps"]["worse"]["eval"]
    assert worse["harmonized"]["overall"]["fmse"] > worse["composite"]["overall"]["fmse"]
    name = f"{registry_flow['name']}-guarded"
    eval_in = tmp_path / "eval.json"
    eval_in.write_text(json.dumps(worse))
    out = tmp_path / "register.json"
    run_stage(register.main, f"register.model_name={name}", f"register.eval_in={eval_in}",
              f"register.out={out}", f"register.card_out={tmp_path / 'card.md'}")  # fmt: skip
    console = "".join(capfd.readouterr())
    assert "has no artifacts at artifact path" not in console and "Traceback" not in console, console
    result = json.loads(out.read_text())
    assert not result["promoted"] and result["aliases"] == ["challenger"]
    assert "does not beat the unharmonized composite" in result["reason"]
    assert result["champion_version"] is None
    client = MlflowClient()
    assert client.get_registered_model(name).aliases == {"challenger": "1"}
