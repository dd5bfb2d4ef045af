"""``benchmarks/gpu_check.py``'s data-parallel check, run on the CPU (``--cpu-dry-run``: gloo, the tiny CLIP), and
its one-line skip where fewer than two GPUs are visible."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # three processes import torch and train two steps
def test_cpu_dry_run_two_workers_equal_accum_steps_two():
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--json"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])["data_parallel"]
    assert row["backend"] == "gloo" and row["status"] == ["complete", "complete"]
    assert row["equal"] and row["max_weight_difference"] <= row["tolerance"] < row["weights_moved"]
    assert row["all_reduce_gb_per_s"] > 0


def test_fewer_than_two_gpus_skip_in_one_line():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    row = gpu_check.data_parallel_check(cpu=False, batch=8, steps=1)
    assert "needs two" in row["skipped"] and "\n" not in row["skipped"]
