"""The classifiers stage's training on a real two-node Ray cluster, joined through RAY_ADDRESS.

Two ``ray start`` nodes (1 CPU each) on loopback stand in for a multi-node cluster; the driver
runs in a subprocess with only RAY_ADDRESS set, exactly as a stage does on a cluster, and the two
1-CPU DDP workers can only fit one per node. The nodes get their own temp dirs and ports and are
stopped by killing the processes this test started (never ``ray stop``, which would also end any
other Ray instance on the machine, e.g. a running ``dvc repro``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from PIL import Image

from invisible_face.params import PROJECT_ROOT

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")]

DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import ray
    from invisible_face import distributed
    from invisible_face.classifiers import train_classifier

    distributed.init_ray()  # joins RAY_ADDRESS: the stage's own code path
    deadline = time.time() + 60
    while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() < deadline:
        time.sleep(0.5)
    config, storage = json.loads(sys.argv[1]), sys.argv[2]
    _, history = train_classifier(config, name="two-nodes", storage_path=storage, scaling={
        "num_workers": 2, "use_gpu": False, "cpus_per_worker": 1, "max_failures": 0,
        "keep_checkpoints": 1, "num_cpus": None})
    # the GCS actor table (the state API would need the dashboard, which these nodes do not run)
    actors = ray._private.state.actors().values()
    print("RESULT " + json.dumps({
        "address": ray.get_runtime_context().gcs_address,
        "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
        "worker_nodes": sorted(a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == "RayTrainWorker"),
        "history": history}), flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], temp_dir: Path, log: Path) -> subprocess.Popen:
    """``ray start --block`` in its own session, so its whole process tree is ours to stop."""
    # Ray 2.5x+ turns on token auth for `ray start`; this loopback-only test cluster opts out
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(
        ["ray", "start", *args, "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
         f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
         "--disable-usage-stats", "--block"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_nodes(nodes: list[subprocess.Popen], temp_root: Path) -> None:
    """SIGTERM, then SIGKILL, every process of these nodes: the ``ray start`` processes, their
    descendants (GCS, raylet, workers) and anything else whose command line names our temp dir."""
    procs: set[psutil.Process] = set()
    for node in nodes:
        try:
            parent = psutil.Process(node.pid)
            procs |= {parent, *parent.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(temp_root) in part for part in proc.info["cmdline"] or []):
            procs.add(proc)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture()
def two_nodes(tmp_path: Path) -> Iterator[str]:
    """A head and a worker node (1 CPU each) on 127.0.0.1 -> the cluster's address."""
    temp_root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Unix socket paths are capped
    port, nodes = free_port(), []
    try:
        nodes.append(start_node(["--head", f"--port={port}", "--include-dashboard=false",
                                 f"--ray-client-server-port={free_port()}"], temp_root / "h", tmp_path / "head.log"))
        deadline = time.time() + 90
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert nodes[0].poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        nodes.append(start_node([f"--address=127.0.0.1:{port}"], temp_root / "w", tmp_path / "worker.log"))
        yield f"127.0.0.1:{port}"
    finally:
        stop_nodes(nodes, temp_root)
        shutil.rmtree(temp_root, ignore_errors=True)


def test_classifier_training_spans_both_nodes(two_nodes: str, tmp_path: Path) -> None:
    folder = tmp_path / "utkface"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["surrogate_train"] * 8 + ["val"] * 4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
        rows.append({"file": f"{i:03d}.jpg", "gender": i % 2, "age_bin": i % 5, "race": i % 5, "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    config = {"arch": "vgg11_bn_small", "attributes": {"gender": 2, "age_bin": 5, "race": 5},
              "input_size": 32, "image_size": 32, "manifest": str(tmp_path / "manifest.csv"),
              "image_dir": str(folder), "train_splits": ["surrogate_train"], "val_splits": ["val"],
              "epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "flip": False, "seed": 0}

    run = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(config), str(tmp_path / "ray")],
                         cwd=PROJECT_ROOT, env={**os.environ, "RAY_ADDRESS": two_nodes, "RAY_AUTH_MODE": "disabled"},
                         capture_output=True, text=True, timeout=240)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    # the subprocess joined our cluster, not a local one (Ray reports 127.0.0.1 as the host's IP)
    assert result["address"].rsplit(":", 1)[1] == two_nodes.rsplit(":", 1)[1]
    assert len(result["nodes"]) == 2
    assert sorted(set(result["worker_nodes"])) == result["nodes"]  # one worker on each node
    assert [row["epoch"] for row in result["history"]] == [1]
    assert np.isfinite(result["history"][0]["train_loss"])
