"""The cluster recipe (docs/CLUSTER.md) with Ray token auth on, as a real cluster runs it (Ray 2.60's default; the
other cluster tests run their private 127.0.0.1 cluster with auth off): a head started with
``RAY_AUTH_MODE=token``, its token read on the head with ``ray get-auth-token``, and a client shell that
runs the guide's ``export`` line as written, then ``ray job submit``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.conftest import NODE_ENV, REPO, ray_node
from tests.cluster.test_cluster_e2e import submit_job
from tests.conftest import BIN, _start, _stop, free_port

# What the README's recipe puts in front of a token: the command that prints it on the head node.
TOKEN_COMMAND = re.compile(r"\$\((ray exec \S+ 'ray get-auth-token' \| tail -1)\)")


def readme_export_lines() -> list[str]:
    """The cluster guide's ``export ... RAY_AUTH_TOKEN=...`` lines (KubeRay and ``ray up``), as written."""
    text = (REPO / "docs" / "CLUSTER.md").read_text()
    return [m.group(0).strip() for m in re.finditer(r"export [^`\n]*RAY_AUTH_TOKEN=[^`\n]*", text)]


def wait_dashboard(url: str, token: str, proc: subprocess.Popen) -> None:
    """The head's dashboard answering an authenticated request (a bounded wait on the head's own state)."""
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray head exited with {proc.returncode}")
        req = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer")


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with token auth on; its token lives in the head's own ``~/.ray``."""
    tmp_path = tmp_path_factory.mktemp("token_head")
    home = tmp_path / "head-home"
    home.mkdir()
    env = {**NODE_ENV, "RAY_AUTH_MODE": "token", "HOME": str(home)}
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env={**os.environ, **env},
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    token = (home / ".ray" / "auth_token").read_text().strip()
    temp = Path("/tmp") / f"ray_tok_{os.getpid()}_{free_port()}"
    cmd = ray_node(temp, head_port=free_port())
    dash = next(a.split("=")[1] for a in cmd if a.startswith("--dashboard-port="))
    proc = _start(cmd, tmp_path / "head.log", env=env)
    try:
        wait_dashboard(f"http://127.0.0.1:{dash}", token, proc)
        yield {"dashboard": f"http://127.0.0.1:{dash}", "home": home, "token": token}
    finally:
        _stop(proc, timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def client_env(tmp_path: Path) -> dict[str, str]:
    """A laptop's shell: no token file, no auth variables, no Ray address; the venv's tools on PATH."""
    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, "HOME": str(home), "PATH": f"{BIN}:{env.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}


def test_readme_recipe_submits_a_job_to_a_cluster_with_token_auth_on(token_head, tmp_path):
    lines = readme_export_lines()
    assert len(lines) == 2, lines  # KubeRay and ray up
    assert all("RAY_AUTH_MODE=token" in line for line in lines), lines  # the client needs both
    (line,) = [line for line in lines if TOKEN_COMMAND.search(line)]
    # the README's line as written, its head-node command run on this head (same token, same CLI)
    on_head = f"$(HOME={token_head['home']} {BIN / 'ray'} get-auth-token | tail -1)"
    recipe = TOKEN_COMMAND.sub(lambda _: on_head, line)
    script = f'{recipe}\nexec ray job submit --address {token_head["dashboard"]} -- python -c "print(\'hello from the job\')"'
    proc = submit_job(["bash", "-c", script], tmp_path, client_env(tmp_path))
    assert "hello from the job" in proc.stdout and "succeeded" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("exports", ["", "export RAY_AUTH_TOKEN={token}"], ids=["no-token", "token-only"])
def test_without_token_mode_the_cluster_refuses_the_job(token_head, tmp_path, exports):
    """No token, or the token without ``RAY_AUTH_MODE=token`` (the README's recipe before): refused, so
    the cluster really has auth on and the recipe's ``RAY_AUTH_MODE=token`` is what makes it work."""
    script = (f"{exports.format(token=token_head['token'])}\n"
              f"exec ray job submit --address {token_head['dashboard']} -- python -c 1")  # fmt: skip
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=client_env(tmp_path), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert "authentication token" in (proc.stdout + proc.stderr), proc.stderr[-3000:]
