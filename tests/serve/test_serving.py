"""``python -m pipeline.serve -m models:/rainnet@champion`` (MLflow's scoring app, as
``mlflow models serve --env-manager local`` runs it, behind a nesting guard): the registry's champion
answers an HTTP request (the README's curl body, ``components.inference.serving_io``) with the harmonized image."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from PIL import Image

from components import tracking
from components.inference import serving_io
from components.inference.predictor import Predictor
from tests.conftest import BIN, _start, _stop, free_port, wait_http
from tests.serve import helpers
from tests.serve.conftest import REPO, log_training_run

SERVE_PHOTO_INDEX = 9  # a photo the strong model did not train on
LIMIT_400 = 2000  # characters of a 400 answer


@contextlib.contextmanager
def tracking_at(uri: str):
    """MLflow pointed at ``uri`` for the block, then back where it was (the session's server)."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    tracking.configure(uri, export_env=False)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


@pytest.fixture
def champion_store(generators, tmp_path) -> str:
    """A fresh sqlite store where the strong generator's training run is ``rainnet`` v1 @ champion."""
    with tracking_at(f"sqlite:///{tmp_path / 'mlruns.db'}") as uri:
        run_id = log_training_run(generators["strong"], "harmonization-train", "builtin", tmp_path / "gen")
        version = mlflow.register_model(f"runs:/{run_id}/model", "rainnet").version
        mlflow.MlflowClient().set_registered_model_alias("rainnet", "champion", version)
    return uri


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_served_champion_returns_the_harmonized_image(champion_store, photos, photo_ids, tmp_path, capsys):
    port = free_port()
    cmd = [str(BIN / "python"), "-m", "pipeline.serve", "-m", "models:/rainnet@champion",
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": champion_store, "MLFLOW_REGISTRY_URI": champion_store,
           "PYTHONPATH": str(REPO)}  # fmt: skip
    proc = _start(cmd, tmp_path / "serve.log", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/ping", timeout=300, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}:\n{(tmp_path / 'serve.log').read_text()[-3000:]}") from None
        # A composite that is neither square nor the network's size, as the README's request makes it.
        real, fg = helpers.load_photo(photos, photo_ids[SERVE_PHOTO_INDEX])
        real = np.asarray(Image.fromarray(real).resize((120, 90), Image.BICUBIC))
        fg = np.asarray(Image.fromarray(fg).resize((120, 90), Image.NEAREST))
        comp = helpers.recolour(real, fg, np.random.default_rng(2), band=(300.0, 2500.0))
        mask = np.where(fg, 255, 0).astype(np.uint8)
        Image.fromarray(comp).save(tmp_path / "composite.png")
        Image.fromarray(mask).save(tmp_path / "mask.png")
        capsys.readouterr()
        assert serving_io.main(["request", str(tmp_path / "composite.png"), str(tmp_path / "mask.png")]) == 0
        body = json.loads(capsys.readouterr().out)  # what the README pipes into curl: the files, base64
        assert set(body["inputs"]) == {"composite_png", "mask_png"}
        tensor_body = serving_io.request(comp, mask, compact=False)
        assert len(json.dumps(body)) * 5 < len(json.dumps(tensor_body))  # compact: a fraction of the lists

        status, answer = post(f"{url}/invocations", body)
        assert status == 200, str(answer)[:2000]
        (out,) = serving_io.response_images(answer)  # answered in kind: base64 PNGs
        assert isinstance(answer["predictions"][0], str)
        assert out.shape == comp.shape and out.dtype == np.uint8
        assert out[~fg].tobytes() == comp[~fg].tobytes()  # the background, byte for byte
        assert not np.array_equal(out[fg], comp[fg])  # the object was harmonized
        # The same Predictor as harmonize and evaluate, loaded from the same registry alias.
        with tracking_at(champion_store):
            local = Predictor.from_uri("models:/rainnet@champion")(comp, mask)
        assert np.array_equal(out, local)
        status, tensor_answer = post(f"{url}/invocations", tensor_body)  # the tensor form: the same image
        assert status == 200 and np.array_equal(serving_io.response_images(tensor_answer)[0], out)

        (tmp_path / "answer.json").write_text(json.dumps(answer))
        assert serving_io.main(["response", str(tmp_path / "answer.json"), str(tmp_path / "out.png")]) == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), out)

        for partial in ({"composite": comp.tolist()}, {"composite_png": body["inputs"]["composite_png"]}):
            status, answer = post(f"{url}/invocations", {"inputs": partial})
            text = json.dumps(answer)
            assert status == 400 and "missing input 'mask" in text, text[:3000]  # names what is missing
            assert len(text) < LIMIT_400, text  # and does not echo the arrays or the image back

        # 5000-deep JSON (10 KB): MLflow's parser raises RecursionError before the model runs, a bare 500
        # from `mlflow models serve`; here a 400 naming the depth, in MLflow's error format.
        deep = '{"inputs": {"composite": ' + "[" * 5000 + "]" * 5000 + ', "mask": []}}'
        req = urllib.request.Request(f"{url}/invocations", deep.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        answer = json.loads(err.value.read())
        assert err.value.code == 400, answer
        assert answer["error_code"] == "BAD_REQUEST" and "nests 5002 levels deep" in answer["message"], answer
        assert len(json.dumps(answer)) < LIMIT_400, answer
        status, _ = post(f"{url}/invocations", body)  # and the server still answers
        assert status == 200
    finally:
        _stop(proc)


def _ports(text: str, command: str) -> set[int]:
    """The ports the ``command`` lines of ``text`` listen on (``-p`` / ``--port``; MLflow's default 5000)."""
    import re

    # a command line (it has options), not prose or a diagram naming the command
    lines = [line[line.index(command):] for line in text.splitlines() if command in line]
    lines = [line for line in lines if re.search(r" --?[a-z]", line.split("#")[0])]
    return {int(m.group(1)) if (m := re.search(r"(?:-p|--port)[ =](\d+)", line)) else 5000 for line in lines}


def test_readme_and_pipeline_summary_start_the_ui_and_the_server_on_different_ports():
    """Following the README and docs (and the summary ``make pipeline`` ends on) literally: ``mlflow ui`` and
    the model server run side by side, so they must not both want one port."""
    from components.stages import summary
    from tests.serve.conftest import REPO

    readme = "\n".join(f.read_text() for f in (REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))))
    tail = "\n".join(summary.lines({"run_id": "r"}, {}, {"name": "rainnet", "version": 1, "metric": "fmse",
                                   "value": 1.0, "promoted": True, "reason": "x", "champion_version": 1}))  # fmt: skip
    for text in (readme, tail):
        ui, serve = _ports(text, "mlflow ui"), _ports(text, "pipeline.serve")
        assert ui and serve and not ui & serve, (ui, serve)
