"""Load on the Serve app (serving/app.py) over loopback: throughput, latency, errors, batching gain.

    python benchmarks/serve_load.py --tiny                  # untrained export, short region search
    python benchmarks/serve_load.py --model artifacts/export/protector
    python benchmarks/serve_load.py --tiny --kill-replica   # kill the model replica mid-load

N client threads (each sends its next photo when the last one is answered) POST photos (round robin,
downscaled to --max-side) to /protect until --requests are done or --duration seconds pass: by
default group photos of 1 to 4 faces composed from the dataset's UTKFace chips
(invisible_face.data.synthetic_photos.GROUP_LAYOUTS), or the in-the-wild photos of --photos DIR.
Each phase deploys the app from serving/config.yaml: first the baseline, max_batch_size 1 at the
largest client count, then the config's batching at each client count of --clients (the load curve
the config's batch size and wait are set from). --kill-replica SIGKILLs the worker process of
a ProtectorModel replica (its pid from /healthz before the load; what an out-of-memory kill does) a
few seconds into the load and reports when Serve replaced it, how the requests in flight at the kill
ended (the ingress retries a call whose replica died once, so none should fail), and how many
requests were retried (``X-Retried: 1``, and the ingress's counts in /healthz). Results are printed,
not asserted; a load run's figures also go to benchmarks/results/serve_load.json (serve_load_tiny.json
with --tiny): faces/s, photos/s, p50 and p99 in seconds and the errors of each phase.
"""

import argparse
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.recorded import write_results  # noqa: E402

REPLICA_MARK = "invisible-face#ProtectorModel#"  # in Serve replica actor names


def load_photos(folder: Path, max_side: int) -> list[tuple[str, bytes]]:
    """(name, bytes) per photo, downscaled so the longer side is at most max_side (0: as is)."""
    photos = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            if max_side and max(img.size) > max_side:
                fmt = img.format
                img.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                img.save(buf, fmt)
                data = buf.getvalue()
        photos.append((path.name, data))
    return photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(model: Path, max_batch_size: int | None, replicas: int) -> None:
    """The app of serving/config.yaml on ``model``, with ``max_batch_size`` photos a batch (None: the config's)."""
    from ray import serve

    from serving.app import from_config

    app, _ = from_config(args={"model": str(model)} | ({"max_batch_size": max_batch_size} if max_batch_size else {}),
                         options={"ProtectorModel": {"num_replicas": replicas}})
    serve.run(app, name="invisible-face", route_prefix="/")


def model_replicas() -> list[str]:
    """Names of the live ProtectorModel replica actors (from the GCS: no dashboard needed)."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and REPLICA_MARK in a["name"])


def run_load(url: str, photos: list[tuple[str, bytes]], clients: int, count: int, duration: float,
             timeout: float) -> dict:
    """count requests (or until duration) from `clients` threads -> latencies and statuses."""
    lock, issued, results, faces = threading.Lock(), [0], [], [0]
    deadline = time.perf_counter() + duration

    def client(_: int) -> None:
        session = requests.Session()
        while True:
            with lock:
                if issued[0] >= count or time.perf_counter() > deadline:
                    return
                name, data = photos[issued[0] % len(photos)]
                issued[0] += 1
            t0 = time.perf_counter()
            retried = False
            try:
                r = session.post(url + "/protect", files={"file": (name, data)}, timeout=timeout)
                status, batch = r.status_code, int(r.headers.get("X-Batch-Size", 0))
                retried = r.headers.get("X-Retried") == "1"
                protected = len(json.loads(r.headers.get("X-Faces", "{}")).get("faces", [])) if status == 200 else 0
                with lock:
                    faces[0] += protected
            except requests.Timeout:
                status, batch = "hung", 0
            except requests.RequestException as err:
                status, batch = type(err).__name__, 0
            with lock:
                results.append((status, time.perf_counter() - t0, batch, t0, retried))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    ok = np.array([s for st, s, *_ in results if st == 200])
    return {"requests": len(results), "ok": len(ok), "wall_s": wall,
            "throughput_rps": len(ok) / wall, "faces_per_s": faces[0] / wall,
            "p50_ms": float(np.percentile(ok, 50) * 1000) if len(ok) else None,
            "p95_ms": float(np.percentile(ok, 95) * 1000) if len(ok) else None,
            "p99_ms": float(np.percentile(ok, 99) * 1000) if len(ok) else None,
            "errors": dict(Counter(str(st) for st, *_ in results if st != 200)),
            "batch_sizes": dict(sorted(Counter(b for st, _, b, *_ in results if st == 200).items())),
            "retried": sum(r for *_, r in results),
            "rows": [{"status": st, "start": t, "end": t + s, "retried": r} for st, s, _, t, r in results]}


def show(label: str, r: dict) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"{label:<22} {r['ok']:>4}/{r['requests']:<4} ok  {r['throughput_rps']:6.2f} photos/s  "
          f"{r['faces_per_s']:5.2f} faces/s  "
          f"p50 {fmt(r['p50_ms'])} ms  p95 {fmt(r['p95_ms'])} ms  p99 {fmt(r['p99_ms'])} ms  "
          f"errors {r['errors'] or 0}  batch sizes {r['batch_sizes']}  retried {r['retried']}")


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="export stem or models:/name@alias (default: the config's)")
    parser.add_argument("--tiny", action="store_true", help="serve an untrained export (fast; no quality)")
    parser.add_argument("--photos", help="a folder of in-the-wild photos "
                        "(default: photos composed from the dataset's chips)")
    parser.add_argument("--max-side", type=int, default=640, help="downscale photos to this side (0: as is)")
    parser.add_argument("--clients", default="1,4,8", help="client counts of the load curve")
    parser.add_argument("--requests", type=int, default=48, help="per phase")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds per phase at most")
    parser.add_argument("--timeout", type=float, default=150.0, help="client timeout: past it a request 'hung'")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas (1 fits a 2-core machine)")
    parser.add_argument("--kill-replica", action="store_true", help="kill a model replica during the load")
    args = parser.parse_args()

    import ray
    from ray import serve

    from invisible_face.data.synthetic_photos import GROUP_LAYOUTS, write_photos
    from invisible_face.params import load_params
    from invisible_face.protect.protector import untrained_export

    os.chdir(ROOT)  # Ray workers import serving.app from the driver's directory
    ray.init(num_cpus=None if os.environ.get("RAY_ADDRESS") else os.cpu_count(), include_dashboard=False,
             log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        config = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())["applications"][0]["args"]
        params = load_params(ROOT / "params.yaml")
        model = untrained_export(tmp / "protector", params) if args.tiny else Path(args.model or config["model"])
        folder = Path(args.photos) if args.photos else write_photos(ROOT / params["data"]["image_dir"], tmp / "photos",
                                                                     GROUP_LAYOUTS)
        photos = load_photos(folder, args.max_side)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        print(f"model {model}; {len(photos)} photos (longer side <= {args.max_side or 'any'}); "
              f"{args.clients} clients; {args.requests} requests or {args.duration:.0f} s per phase; "
              f"{args.replicas} model replica(s); {os.cpu_count()} CPUs")
        batched, curve = int(config["max_batch_size"]), [int(c) for c in args.clients.split(",")]
        phases = {}
        # the baseline (one photo a batch, at the most clients), then the config's batching at each client count
        plan = [(batched, max(curve))] if args.kill_replica else [(1, max(curve))] + [(None, c) for c in curve]
        deployed = "none"
        for size, clients in plan:
            if size != deployed:
                deploy(model, size, args.replicas)
                requests.post(url + "/protect", files={"file": photos[0]}, timeout=args.timeout)  # warm
                model_info = requests.get(url + "/healthz", timeout=30).json()
                print(f"model replica: torch threads {model_info.get('torch_threads')}, "
                      f"max_batch_size {model_info.get('max_batch_size')}, "
                      f"wait {model_info.get('batch_wait_timeout_s')} s", flush=True)
                deployed = size
            if not args.kill_replica:
                result = run_load(url, photos, clients, args.requests, args.duration, args.timeout)
                name = f"clients_{clients}_max_batch_size_{size or batched}"
                show(name, result)
                phases[name] = {
                    "clients": clients, "max_batch_size": size or batched,
                    "faces_per_s": result["faces_per_s"], "photos_per_s": result["throughput_rps"],
                    "p50_s": None if result["p50_ms"] is None else result["p50_ms"] / 1000,
                    "p99_s": None if result["p99_ms"] is None else result["p99_ms"] / 1000,
                    "errors": sum(result["errors"].values()), "requests": result["requests"],
                    "batch_sizes": {str(k): v for k, v in result["batch_sizes"].items()}}
                if size == 1:
                    base = result
                continue
            before = model_replicas()
            health_before = requests.get(url + "/healthz", timeout=30).json()  # idle: answered at once
            killed = {}

            def killer() -> None:
                time.sleep(3)
                victim = next((n for n in before if n.endswith(health_before["replica"])), before[0])
                os.kill(health_before["pid"], signal.SIGKILL)  # the replica's worker process, as an OOM kill
                killed.update(name=victim, at=time.perf_counter())
                while time.perf_counter() - killed["at"] < 120:
                    fresh = [n for n in model_replicas() if n not in before]
                    if fresh:
                        killed.update(replacement=fresh[0], after_s=time.perf_counter() - killed["at"])
                        return
                    time.sleep(0.5)

            thread = threading.Thread(target=killer)
            thread.start()
            result = run_load(url, photos, max(curve), args.requests, args.duration, args.timeout)
            thread.join()
            show(f"kill replica (b={size})", result)
            print(f"killed {killed.get('name')}; " + (
                f"Serve started {killed['replacement']} {killed['after_s']:.1f} s later" if "replacement" in killed
                else "no replacement seen within 120 s"))
            at = killed.get("at", float("inf"))
            in_flight = [r for r in result["rows"] if r["start"] < at < r["end"]]
            failed = Counter(str(r["status"]) for r in in_flight if r["status"] != 200)
            hung = result["errors"].get("hung", 0)
            print(f"requests in flight at the kill: {len(in_flight)}; failed: {sum(failed.values())}"
                  + (f" {dict(failed)}" if failed else "")
                  + f"; retried (X-Retried: 1): {sum(r['retried'] for r in in_flight)} of them, "
                  f"{result['retried']} in the phase")
            print(f"requests that hung (no answer within {args.timeout:.0f} s): {hung}; "
                  f"error statuses in the whole phase: {result['errors'] or 'none'}")
            health = requests.get(url + "/healthz", timeout=30)
            body = json.loads(health.text)
            print(f"/healthz after the kill: {health.status_code} replica {body.get('replica')} "
                  f"(pid {body.get('pid')}), ingress retries {body.get('ingress')}")
        if not args.kill_replica:
            top = phases[f"clients_{max(curve)}_max_batch_size_{batched}"]
            gain = top["faces_per_s"] / base["faces_per_s"] if base["faces_per_s"] else float("nan")
            print(f"batching gain at {max(curve)} clients (max_batch_size {batched} vs 1): {gain:.2f}x faces/s")
            write_results("serve_load_tiny" if args.tiny else "serve_load",
                          {"model": str(model), "clients": curve, "replicas": args.replicas,
                           "photos": len(photos), "faces_per_photo": "1-4" if not args.photos else "as found",
                           "max_batch_size": batched, "batch_wait_timeout_s": config["batch_wait_timeout_s"],
                           "phases": phases, "batching_gain": gain})
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
