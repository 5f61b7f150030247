"""``dvc.yaml`` against the code: each stage's deps are the ``components`` modules it imports (no more,
no less) and its params are the sections it declares reading, which its code's ``params.<section>``
uses must stay within; metrics are the small headline files only."""

from __future__ import annotations

import importlib
import modulefinder
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Modules that take any Params and touch every section generically (loading, CLI help, MLflow tags):
# the sections a stage reads are decided by the stage's own modules.
GENERIC = {"components/config.py", "components/cli.py", "components/tracking/__init__.py"}
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
STAGES = sorted(DVC)
SECTIONS = ("storage", "prepare", "model", "train", "ablate", "evaluate", "register", "harmonize")


def imported_components(stage: str) -> set[str]:
    """Repo-relative files of the ``components`` modules ``pipeline/<stage>.py`` imports, also the ones
    imported inside functions (ModuleFinder scans every code object); third-party imports are not
    followed (only the repo is on the finder's path)."""
    finder = modulefinder.ModuleFinder(path=[str(REPO)])
    finder.run_script(str(REPO / "pipeline" / f"{stage}.py"))
    return {
        str(Path(m.__file__).relative_to(REPO))
        for name, m in finder.modules.items()
        if name.split(".")[0] == "components" and m.__file__
    }


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_deps_are_what_the_stage_imports(stage):
    deps = [d for d in DVC[stage]["deps"] if d.startswith(("components", "pipeline"))]
    code = imported_components(stage) | {f"pipeline/{stage}.py"}
    missing = sorted(p for p in code if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage}: imports {missing} but does not list them in deps"
    stale = sorted(d for d in deps if not any(covered(p, [d]) for p in code))
    assert not stale, f"dvc.yaml stage {stage}: deps {stale} are not imported by the stage"


@pytest.mark.parametrize("stage", STAGES)
def test_params_are_what_the_stage_reads(stage):
    """The stage module's ``PARAMS`` (what its --help lists) is dvc.yaml's params list, and every
    ``params.<section>`` its components use is among them."""
    declared = list(DVC[stage]["params"])
    module = importlib.import_module(f"pipeline.{stage}")
    assert sorted(module.PARAMS) == sorted(declared), f"pipeline/{stage}.py PARAMS vs dvc.yaml params"
    sections = set()
    for rel in (imported_components(stage) | {f"pipeline/{stage}.py"}) - GENERIC:
        text = (REPO / rel).read_text()
        sections |= set(re.findall(rf"\bparams\.({'|'.join(SECTIONS)})\b", text))
    unlisted = sorted(s for s in sections if not any(d == s or d.startswith(s + ".") for d in declared))
    assert not unlisted, f"dvc.yaml stage {stage}: reads params sections {unlisted} it does not list"


def test_metrics_are_headline_numbers_only():
    """At most about 20 numbers in all: every metrics file is a small headline JSON."""
    files = [next(iter(m)) for s in DVC.values() for m in s.get("metrics", [])]
    assert files and all(f.startswith("metrics/headline/") for f in files), files
