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


@pytest.mark.slow
def test_search_efficiency_on_a_continuous_benchmark_says_its_test_and_keeps_its_replays(tmp_path):
    from helpers import synthetic_points_table

    table = synthetic_points_table(tmp_path / "synthetic.parquet")

    def args(out, *more):
        return ["--benchmark", "continuous", "--table", str(table), "--seeds", "2", "--trials", "4", "--arms", "random",
                "--warm-start", "--proxy-trials", "3", "--warm-top", "1", "--out", str(out), *more]

    result = run_script("search_efficiency.py", *args(tmp_path / "replays", "--figure", str(tmp_path / "hv.png"), "--json"))
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["arm"] == "gp" and figures["seeds"] == 2 and 0.0 <= figures["p_value"] <= 1.0  # demo.yaml's searcher
    arms = {row["arm"]: row for row in figures["arms"]}
    assert set(arms) == {"random", "gp"}
    assert figures["hv_ratio_vs_random"] == pytest.approx(arms["gp"]["hv_mean"] / arms["random"]["hv_mean"])
    assert figures["surrogate_quality"]["ood_mean"]["r2"] > 0.5 and len(figures["warm_start"]["warm_by_seed"]) == 2
    assert (tmp_path / "hv.png").stat().st_size > 10_000
    kept = sorted(p.name for p in (tmp_path / "replays").iterdir())
    assert "random-seed0" in kept and "proxy-seed1" in kept and "warm-gp-seed1" in kept

    # two shards side by side, then a run that only gathers their replays: the same figures as one process
    sharded = tmp_path / "sharded"
    for shard in ("1/2", "2/2"):
        part = run_script("search_efficiency.py", *args(sharded, "--shard", shard))
        assert part.returncode == 0 and f"shard {shard}: 2 of 4 searches" in part.stdout, part.stderr
    assert sorted(p.name for p in sharded.iterdir()) == kept
    gathered = run_script("search_efficiency.py", *args(sharded, "--json"))
    figures_again = json.loads(gathered.stdout.splitlines()[-1])

    def measured(rows):  # every figure but the wall time the replays took
        return [{k: v for k, v in row.items() if k != "replay_seconds"} for row in rows]

    assert measured(figures_again["arms"]) == measured(figures["arms"])
    assert figures_again["warm_start"] == figures["warm_start"]


def test_search_efficiency_refuses_a_bad_shard(tmp_path):
    for bad in ("3/2", "0/2", "two"):
        result = run_script("search_efficiency.py", "--shard", bad, "--out", str(tmp_path))
        assert result.returncode == 2 and "--shard" in result.stderr.splitlines()[-1], result.stderr
    result = run_script("search_efficiency.py", "--shard", "1/2")
    assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith("--shard needs --out (the folder the shards share)")
