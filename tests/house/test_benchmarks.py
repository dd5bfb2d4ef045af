"""The benchmark scripts' contracts (their figures are for people to read, not for tests to time)."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import ROOT



def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_gpu_check_exits_2_without_cuda():
    result = run_script("gpu_check.py", "--json")
    assert result.returncode == 2 and result.stderr.strip() == "gpu_check: no CUDA device is visible; nothing to check"


def test_data_throughput_times_every_path_on_the_same_images():
    result = run_script("data_throughput.py", "--images", "24", "--batch-size", "8", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["images"] == 24
    rates, per_core = figures["images_per_second"], figures["images_per_second_per_core"]
    assert set(rates) == {"on_the_fly", "loader_w0", "loader_w1", "loader_w2", "packed_raw", "packed_jpeg"}
    assert per_core["loader_w2"] == pytest.approx(rates["loader_w2"] / 2, rel=1e-3)
    assert figures["packed_over_on_the_fly_per_core"] == pytest.approx(per_core["packed_raw"] / per_core["on_the_fly"], rel=1e-2)
