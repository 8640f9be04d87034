"""benchmarks/gpu_check.py runs end to end on CPU (tiny models), so it is ready for a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_runs_on_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
           "--dtypes", "float32", "--batch-sizes", "1", "--images", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "FLOPs (counted" in out and "detector forward" in out and "sam encoder" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("float32 ")]
    assert [(r[1], r[2], r[3]) for r in rows] == [("1", "False", "False"), ("1", "True", "False")]
    for r in rows:
        assert float(r[4]) > 0  # images/s
        assert float(r[10]) == 0.0  # the float32 reference against itself
    assert "n/a" in out  # no known peak on a CPU: the floor is not made up
