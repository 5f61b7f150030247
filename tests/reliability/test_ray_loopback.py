"""A single-machine Ray listens on 127.0.0.1 only (issue 23, item 9): Ray 2.60 swaps a loopback node
address for the machine's network address, and its GCS, raylet, workers and agents then listened on every
interface. Checked as an admin would (``ss -ltnp``): every listening socket of the Ray's processes."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import LOOPBACK_ONLY_ENV, _stop

REPO = Path(__file__).resolve().parents[2]

# The stages' own local Ray (components/training/launch.py), started as `train` / `ablate` start it, in a
# process that imported ray before (the switch is read at import) and then runs a task on it.
LOCAL_RAY = """
import sys
import ray
from components.training.launch import start_local_ray
address = start_local_ray(num_cpus=1, num_gpus=0)
node = ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote())
print(address, node, flush=True)
sys.stdin.read()  # up until the test closes stdin
"""


def listeners(root_pid: int) -> dict[tuple[str, int], str]:
    """Every listening TCP socket of ``root_pid`` and its descendants: (ip, port) -> process name."""
    root = psutil.Process(root_pid)
    procs = {p.pid: p for p in (root, *root.children(recursive=True))}
    out = {}
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in procs:
            with_name = procs[c.pid].name() if procs[c.pid].is_running() else "?"
            out[(c.laddr.ip, c.laddr.port)] = with_name
    return out


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket bound to 127.0.0.1
    return (mapped or addr).is_loopback


def test_the_stages_local_ray_listens_on_loopback_only():
    # a user's shell: no Ray address, no switch set (the suite's head sets it in this process)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", LOOPBACK_ONLY_ENV)}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # the Ray is up and has run a task
        assert line, f"the local Ray did not start (exit {proc.poll()})"
        address, node = line.split()
        found = listeners(proc.pid)
        gcs_port = int(address.rsplit(":", 1)[1])
        assert gcs_port in {port for _, port in found}, found  # the Ray's own servers are in the list
        assert len(found) >= 4, found  # GCS, raylet, a worker, the agents: not an empty check
        public = {k: v for k, v in found.items() if not is_loopback(k[0])}
        assert not public, f"listening on a non-loopback address: {public}"
        assert address.startswith("127.0.0.1:") and node == "127.0.0.1", line  # the task ran on it
    finally:
        proc.stdin.close()  # the driver exits, and Ray with it
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            _stop(proc, timeout=60)


def test_the_suites_ray_head_listens_on_loopback_only(ray_cluster):
    """The head the tests run stages on (``ray start --head --node-ip-address=127.0.0.1``)."""
    found = listeners(ray_cluster["pid"])
    gcs_port = int(ray_cluster["address"].rsplit(":", 1)[1])
    assert gcs_port in {port for _, port in found}, found
    public = {k: v for k, v in found.items() if not is_loopback(k[0])}
    assert not public, f"listening on a non-loopback address: {public}"
