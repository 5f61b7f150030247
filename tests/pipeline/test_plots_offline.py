"""``dvc plots show`` with no network: the page DVC writes loads no script from outside (the project's
HTML template carries Vega inline) and draws the training curves in headless Chromium."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import BIN

REPO = Path(__file__).resolve().parents[2]


def test_dvc_plots_show_draws_the_curves_without_a_network(tmp_path):
    from tests.serve.browser import Browser

    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    for name in ("config", REPO_TEMPLATE):  # the project's DVC config and the page template it names
        shutil.copy(REPO / ".dvc" / name, project / ".dvc" / name)
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]  # the project's curve definitions
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    columns = sorted({c for p in plots for cols in next(iter(p.values()))["y"].values() for c in cols})
    (project / "metrics").mkdir()
    with (project / "metrics" / "train_epochs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *columns])
        for epoch in range(1, 5):
            w.writerow([epoch, *(10.0 + epoch * (i + 1) for i in range(len(columns)))])
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    res = subprocess.run([str(BIN / "dvc"), "plots", "show", "-o", "dvc_plots"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    page = project / "dvc_plots" / "index.html"
    html = page.read_text()
    assert not re.findall(r"<script[^>]+src=", html)  # nothing fetched: no CDN, no other host
    assert "vegaEmbed" in html and html.count("<script>") >= 3

    browser = Browser(tmp_path)
    try:
        browser.goto(page.as_uri())
        drawn = browser.wait_for(
            f"document.querySelectorAll('.vega-embed').length >= {len(plots)} && "
            "[...document.querySelectorAll('.vega-embed')].every(e => e.querySelector('canvas, svg')) && "
            "document.querySelectorAll('.vega-embed').length"
        )
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        browser.screenshot(REPO / "test-artifacts" / "dvc_plots_offline.png")
    finally:
        browser.close()
    assert drawn == len(plots)
    assert "dvc_plots" in (REPO / ".gitignore").read_text()


REPO_TEMPLATE = "plots_offline.html"
