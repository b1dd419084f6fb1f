"""The GPU benchmark's dry run on the CPU: every code path of ``benchmarks/gpu.py``, tiny, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "2", "--warmup", "1"]
    command += ["--models", "test_resnet", "--batch-sizes", "4", "--image-size", "32", "--workers", "0"]
    command += ["--settings", "fp32,bf16+cl+compile", "--jpegs", "20", "--jpeg-size", "40"]
    command += ["--compile-backend", "eager", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    model = report["models"]["test_resnet"]
    assert set(model["training"]) == {"fp32", "bf16+cl+compile"}
    assert all(row["plain"] > 0 and row["ours"] > 0 for row in model["training"].values())
    assert model["data loading"]["JPEG loader by workers"]["0"] > 0
    assert {"eager", "compiled", "onnxruntime"} <= set(model["inference"])
    assert "skipped" in model["ddp"]["note"]
    assert "ours/plain" in result.stdout
