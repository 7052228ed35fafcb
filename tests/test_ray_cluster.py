"""The classifiers stage on a real two-node Ray cluster, joined through RAY_ADDRESS.

Two ``ray start`` nodes (1 CPU each) on loopback stand in for a multi-node cluster. The driver is
the stage's own script on the quick profile, in a subprocess with only RAY_ADDRESS set, as on a
cluster; each model's two 1-CPU DDP workers can only fit one per node. The nodes get their own
temp dirs and ports and are stopped by killing the processes this test started (never ``ray stop``,
which would also end any other Ray instance on the machine, e.g. a running ``dvc repro``).
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
import yaml
from PIL import Image

from invisible_face.models.classifiers import classifier_path
from invisible_face.models.networks import load_classifier
from invisible_face.params import PROJECT_ROOT, deep_merge, load_params

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")]

PROBE = textwrap.dedent("""
    import json, ray

    ray.init()  # joins RAY_ADDRESS
    # the GCS actor table keeps finished actors (the state API would need the dashboard, which these
    # nodes do not run)
    actors = ray._private.state.actors().values()
    print("RESULT " + json.dumps({
        "address": ray.get_runtime_context().gcs_address,
        "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
        "worker_nodes": [a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == "RayTrainWorker"]}))
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


def quick_params(work: Path, image_dir: Path) -> Path:
    """params.yaml with the quick profile merged in, as ``invisible_face.params quick`` writes it,
    with the images and Ray's run folder inside ``work``."""
    params = deep_merge(load_params(PROJECT_ROOT / "params.yaml"), load_params(PROJECT_ROOT / "profiles/quick.yaml"))
    params["profile"] = "quick"
    params["data"]["image_dir"] = str(image_dir)
    params["classifiers"]["storage_path"] = str(work / "ray_results")
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def synthetic_manifest(work: Path) -> Path:
    """A few random chips in every split the classifiers stage reads (it only needs labels)."""
    folder = work / "utkface"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["surrogate_train"] * 8 + ["target_train"] * 8 + ["val"] * 4 + ["test"] * 4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
        rows.append({"file": f"{i:03d}.jpg", "gender": i % 2, "age_bin": i % 5, "race": i % 5, "split": split})
    pd.DataFrame(rows).to_csv(work / "manifest.csv", index=False)
    return work / "manifest.csv"


def test_classifiers_stage_spans_both_nodes(two_nodes: str, tmp_path: Path) -> None:
    """The classifiers stage's own script, quick profile, 2 DDP workers, joined via RAY_ADDRESS."""
    work = tmp_path / "work"
    work.mkdir()
    params = quick_params(work, work / "utkface")
    manifest = synthetic_manifest(work)
    env = {**os.environ, "RAY_ADDRESS": two_nodes, "RAY_AUTH_MODE": "disabled"}
    stage = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "components/classifiers/main.py"), "--params", str(params),
         "--manifest", str(manifest), "--out", str(work / "out")],
        cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert stage.returncode == 0, stage.stdout[-3000:] + stage.stderr[-3000:]

    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env, capture_output=True, text=True,
                           timeout=60)
    lines = [line for line in probe.stdout.splitlines() if line.startswith("RESULT ")]
    assert probe.returncode == 0 and lines, probe.stdout[-3000:] + probe.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    # the stage joined our cluster, not a local one (Ray reports 127.0.0.1 as the host's IP)
    assert result["address"].rsplit(":", 1)[1] == two_nodes.rsplit(":", 1)[1]
    assert len(result["nodes"]) == 2
    quick = load_params(params)["classifiers"]
    models = [quick["surrogate"]["name"], *(m["name"] for m in quick["zoo"])]
    # two 1-CPU workers per model, and each node has 1 CPU: one worker on each node, every time
    assert len(result["worker_nodes"]) == 2 * len(models)
    assert sorted(set(result["worker_nodes"])) == result["nodes"]
    metrics = json.loads((work / "out/metrics.json").read_text())
    # beside them, trained in the stage's own process: the heads on dlib's embedding, the defender's and the adversary's
    heads = [quick["face_surrogate"]["name"], quick["embedding_adversary"]["name"]]
    assert sorted(metrics) == sorted([*models, *heads]) and all(metrics[h]["test_images"] > 0 for h in heads)
    for name in models:
        assert 0.0 <= metrics[name]["test_acc_mean"] <= 1.0
        assert load_classifier(classifier_path(name, work / "out/models")).arch == metrics[name]["arch"]
