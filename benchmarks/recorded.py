"""Where a benchmark leaves its figures: ``benchmarks/results/<name>.json``, with the machine and the
date beside them, so the file committed with a run says what was measured, where and when."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores the process may use, torch's threads."""
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    from invisible_face.method.refine import bf16_native

    return {"cpu": model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "bf16_native": bf16_native("cpu")}  # bfloat16 instructions: refine.bf16_min_batch applies


def write_results(name: str, figures: dict[str, Any], folder: Path = RESULTS) -> Path:
    """``figures`` with the machine and today's date as ``<folder>/<name>.json`` -> its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": machine(), **figures}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"figures written to {path}")
    return path
