"""The MLflow UI as a product surface, seen through headless Chromium (Debian's ``chromium``).

The UI is a React app: ``--dump-dom`` with a virtual-time budget returns the DOM after its scripts ran.
Screenshots go to ``test-artifacts/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import urllib.parse

import pytest

from tests.serve.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"


def chromium(url: str, tmp_path, *, screenshot=None) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1400,1000",
    ]  # fmt: skip
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    res = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def text(dom: str) -> str:
    """The visible text of a DOM (style and script bodies dropped), whitespace collapsed."""
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def version_rows(dom: str) -> dict[str, str]:
    """The versions table: ``{"2": "Version 2 <date> <tags> @ champion ..."}``, one entry per row."""
    rows = re.split(r"(?=Version \d+ \d+/\d+/\d+)", text(dom))[1:]
    return {r.split()[1]: r for r in rows}


def table_rows(dom: str, first_cell: str) -> list[str]:
    """Rows of the compare page's details table that start with ``first_cell`` (e.g. ``Run Name:``)."""
    t = text(dom)
    return [t[m.start() : m.start() + 400] for m in re.finditer(re.escape(first_cell), t)]


def test_registered_model_and_run_comparison(registry_flow, tmp_path):
    from mlflow import MlflowClient

    ARTIFACTS.mkdir(exist_ok=True)
    url, name = registry_flow["uri"], registry_flow["name"]

    model_url = f"{url}/#/models/{name}"
    dom = chromium(model_url, tmp_path)
    (ARTIFACTS / "mlflow_ui_model.html").write_text(dom)
    by_version = version_rows(dom)
    assert set(by_version) == {"1", "2", "3"}, text(dom)[-3000:]
    assert "@ champion" in by_version["2"] and "@ challenger" in by_version["3"]
    assert "@ champion" not in by_version["1"] and "@ champion" not in by_version["3"]
    chromium(model_url, tmp_path, screenshot=ARTIFACTS / "mlflow_ui_model.png")

    runs = registry_flow["runs"]
    ids = [runs["weak"], runs["strong"]]
    client = MlflowClient()
    names = [client.get_run(i).info.run_name for i in ids]
    exp = client.get_run(ids[0]).info.experiment_id
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp])})
    compare_url = f"{url}/#/compare-runs?{query}"
    dom = chromium(compare_url, tmp_path)
    (ARTIFACTS / "mlflow_ui_compare.html").write_text(dom)
    assert "Comparing 2 Runs" in dom
    name_row = table_rows(dom, "Run Name:")[0]
    assert name_row.index(names[0]) < name_row.index(names[1])  # side by side, in order
    assert all(n.startswith("rainnet-rain-decoder-builtin-") for n in names)  # model + placement + data
    assert table_rows(dom, "val_fmse")  # the metric both runs share has its row
    shot = ARTIFACTS / "mlflow_ui_compare.png"
    chromium(compare_url, tmp_path, screenshot=shot)
    assert shot.stat().st_size > 10_000


# The compare page's metrics table is two virtualized grids side by side (names | one column per run);
# a row is the cells at the same ``top``.
METRIC_ROW_JS = """(() => {
  const a = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === '%s');
  if (!a) return null;
  const cell = a.parentElement, names = cell.closest('.ReactVirtualized__Grid');
  const grids = [...names.parentElement.parentElement.querySelectorAll('.ReactVirtualized__Grid')]
    .filter(g => g !== names);
  return grids.flatMap(g => [...g.querySelectorAll('[role=rowgroup] > div')]
    .filter(d => d.style.top === cell.style.top)
    .sort((x, y) => parseFloat(x.style.left) - parseFloat(y.style.left)).map(d => d.textContent));
})()"""
# The artifact previews, once loaded: position, size and the sum of their RGB values (from a canvas).
PREVIEWS_JS = """(() => {
  const imgs = [...document.querySelectorAll('img[alt="%s"]')];
  if (imgs.length !== 2 || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
  return imgs.map(i => {
    const c = document.createElement('canvas');
    c.width = i.naturalWidth; c.height = i.naturalHeight;
    const ctx = c.getContext('2d'); ctx.drawImage(i, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let sum = 0; for (let k = 0; k < px.length; k += 4) sum += px[k] + px[k + 1] + px[k + 2];
    const r = i.getBoundingClientRect();
    return {w: i.naturalWidth, h: i.naturalHeight, left: r.left, top: r.top, sum};
  });
})()"""


def test_compare_page_shows_test_fmse_and_sample_grids_side_by_side(registry_flow, tmp_path):
    """Two training runs on one compare page: the test fMSE that decides promotion in the Metrics table
    (copied onto the training runs by evaluate) and the latest sample grids, each run's own, side by side
    (``samples.png``, logged at every epoch by the training logger)."""
    import numpy as np
    from mlflow import MlflowClient
    from PIL import Image

    from components.tracking.training_log import LATEST_SAMPLES
    from tests.serve.browser import Browser

    ARTIFACTS.mkdir(exist_ok=True)
    client = MlflowClient()
    ids = [registry_flow["runs"]["weak"], registry_flow["runs"]["strong"]]
    runs = [client.get_run(i) for i in ids]
    query = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([runs[0].info.experiment_id])}
    )
    browser = Browser(tmp_path)
    try:
        browser.goto(f"{registry_flow['uri']}/#/compare-runs?{query}")
        shown = browser.wait_for(METRIC_ROW_JS % "test_fmse")
        assert [float(v) for v in shown] == [
            pytest.approx(r.data.metrics["test_fmse"], rel=1e-3) for r in runs
        ], shown  # one value per run, in the runs' order
        assert runs[1].data.metrics["test_fmse"] < runs[0].data.metrics["test_fmse"]

        node = f"""document.querySelector('[data-testid="artifact-tree-node"][artifact-name="{LATEST_SAMPLES}"]')"""
        browser.wait_for(f"!!{node}")  # the one artifact both runs have at their root, once listed
        browser.js(f"{node}.click()")
        previews = browser.wait_for(PREVIEWS_JS % LATEST_SAMPLES)
        browser.screenshot(ARTIFACTS / "mlflow_ui_compare_samples.png")
    finally:
        browser.close()
    left, right = previews
    assert abs(left["top"] - right["top"]) < 2 and right["left"] > left["left"] + left["w"] / 2  # side by side
    for shown_image, run_id in zip(previews, ids, strict=True):  # each column is its own run's grid
        (tmp_path / run_id).mkdir()
        grid = np.asarray(Image.open(client.download_artifacts(run_id, LATEST_SAMPLES, str(tmp_path / run_id))))
        assert (shown_image["h"], shown_image["w"]) == grid.shape[:2]
        assert shown_image["sum"] == int(grid.astype(np.int64).sum())


# The model page's versions table: the row-select checkbox of "Version N".
VERSION_CHECKBOX_JS = """[...document.querySelectorAll('[role=row] a')]
  .find(a => a.textContent.trim() === 'Version %s')?.closest('[role=row]').querySelector('input[type=checkbox]')"""
# The version compare page: a header row ("Model Version:") or a metric row, one cell per version.
VERSION_COMPARE_ROW_JS = """(() => {
  const th = [...document.querySelectorAll('tr > th')].find(th => th.textContent.trim() === '%s');
  return th ? [...th.parentElement.querySelectorAll('td')].map(td => td.textContent.trim()) : null;
})()"""
# A version page once loaded (its source run's link in place): aliases and the tags with the decision.
VERSION_PAGE_JS = """(() => {
  if (!document.querySelector('a[href*="/runs/%s"]')) return null;
  const tag = k => document.querySelector(`tr[data-row-key="${k}"] td:nth-child(2)`)?.textContent.trim();
  const item = [...document.querySelectorAll('[data-testid=descriptions-item]')]
    .find(d => d.textContent.startsWith('Aliases'));
  if (!item || tag('promoted') === undefined) return null;
  return {aliases: [...item.querySelectorAll('[role=status]')].map(e => e.getAttribute('title')),
          promoted: tag('promoted'), promotion_reason: tag('promotion_reason'), test_fmse: tag('test_fmse'),
          aliases_tag: tag('aliases') ?? null, text: document.body.innerText};
})()"""


def test_version_compare_page_shows_test_fmse_and_each_version_page_the_decision(registry_flow, tmp_path):
    """Versions 1 (the weak model, champion first) and 2 (the strong one that took the alias) as a user
    compares them: ticked on the model page, then "Compare". MLflow 3.17's model-version compare page
    (``#/compare-model-versions``) shows each version's source-run params and metrics, so the test fMSE
    that decides promotion is there side by side; it has no tags or aliases, so the decision is read
    where the UI shows it: each version's page (linked from the compare page), its aliases and the
    ``promoted`` / ``promotion_reason`` tags that register wrote."""
    from mlflow import MlflowClient

    from tests.serve.browser import Browser

    ARTIFACTS.mkdir(exist_ok=True)
    client, name, url = MlflowClient(), registry_flow["name"], registry_flow["uri"]
    versions = [client.get_model_version(name, v) for v in ("1", "2")]
    assert [v.run_id for v in versions] == [registry_flow["runs"]["weak"], registry_flow["runs"]["strong"]]
    runs = [client.get_run(v.run_id) for v in versions]
    browser = Browser(tmp_path)
    try:
        browser.goto(f"{url}/#/models/{name}")
        for v in versions:
            browser.wait_for(f"!!({VERSION_CHECKBOX_JS % v.version})")
            browser.js(f"({VERSION_CHECKBOX_JS % v.version}).click()")
        compare = """document.querySelector('[data-testid="compareButton"]')"""
        browser.wait_for(f"!{compare}.disabled")
        browser.js(f"{compare}.click()")
        assert browser.wait_for(VERSION_COMPARE_ROW_JS % "Model Version:") == ["1", "2"]
        assert "Comparing 2 Versions" in browser.js("document.body.innerText")
        assert "compare-model-versions" in browser.js("location.hash")
        shown = browser.wait_for(VERSION_COMPARE_ROW_JS % "test_fmse")
        assert [float(s) for s in shown] == [
            pytest.approx(r.data.metrics["test_fmse"], rel=1e-3) for r in runs
        ], shown  # one value per version, in the versions' order
        browser.screenshot(ARTIFACTS / "mlflow_ui_compare_versions.png")
        links = browser.js("""[...document.querySelectorAll('td a[href*="/versions/"]')].map(a => a.href)""")
        assert [link.rsplit("/", 1)[1] for link in links] == ["1", "2"]

        pages = []
        for v, link in zip(versions, links, strict=True):  # what the version links open
            browser.goto(link)
            pages.append(browser.wait_for(VERSION_PAGE_JS % v.run_id))
        browser.screenshot(ARTIFACTS / "mlflow_ui_version_2.png")
    finally:
        browser.close()
    for page, v in zip(pages, versions, strict=True):
        assert sorted(page["aliases"]) == sorted(v.aliases), page
        assert page["promoted"] == v.tags["promoted"], page
        assert page["promotion_reason"] == v.tags["promotion_reason"], page
        assert float(page["test_fmse"]) == pytest.approx(float(v.tags["test_fmse"]))
        # The description as the page shows it: the test numbers against the composite, then the decision,
        # right under its title; no tag that goes stale when another version takes an alias.
        assert page["aliases_tag"] is None, page["aliases_tag"]
        shown = page["text"].split(f"{name} version {v.version}\n", 1)[1].strip().splitlines()[:3]
        lines = [line.strip() for line in shown if line.strip()]
        assert lines[0].startswith(f"Test fmse {float(v.tags['test_fmse']):.2f} (composite "), lines
        assert lines[1].startswith("Decision: " + ("promoted" if v.tags["promoted"] == "true" else "not")), lines
    old, new = pages
    assert "champion" in new["aliases"] and "champion" not in old["aliases"]
    assert new["promoted"] == "true" and "vs champion v1" in new["promotion_reason"]
    assert float(new["test_fmse"]) < float(old["test_fmse"])  # the metric that decided it
