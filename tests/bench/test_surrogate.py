"""The continuous benchmark: the surrogate fitted to a table of random points (its fit, its measured noise, its
held-out quality), and replays on it through Ray Tune + Optuna + the scheduler, deterministic for a seed."""

import numpy as np
import pytest

from robusttune.bench.replay import Arm, run_replay, table_reference
from robusttune.bench.surrogate import Surrogate, measure_noise
from robusttune.bench.table import read_table
from robusttune.experiment import read_records
from helpers import SYNTHETIC_EVALUATIONS, SYNTHETIC_NOISE_SD, synthetic_points_table, synthetic_truth as truth

EVALUATIONS, NOISE_SD = SYNTHETIC_EVALUATIONS, SYNTHETIC_NOISE_SD


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return synthetic_points_table(tmp_path_factory.mktemp("surrogate") / "synthetic.parquet")


@pytest.fixture(scope="module")
def surrogate(table_path):
    return Surrogate(read_table(table_path))


def test_the_noise_is_measured_from_the_repeated_seeds(surrogate):
    noise = surrogate.noise
    assert noise.points == 12
    for metric in ("id_val_acc", "ood_mean"):
        assert all(0.5 * NOISE_SD < sd < 1.6 * NOISE_SD for sd in noise.sd[metric]), noise.sd
        assert noise.correlation[metric] > 0.95  # one offset per curve: a seed that starts high stays high


def test_a_table_without_repeats_has_no_noise(tmp_path):
    table = read_table(synthetic_points_table(tmp_path / "t.parquet", points=20, repeated=0, seeds=1))
    noise = measure_noise(table, ["id_val_acc"])
    assert noise.points == 0 and noise.sd["id_val_acc"] == [0.0] * EVALUATIONS


def test_the_fit_follows_the_landscape_on_held_out_points(surrogate):
    quality = surrogate.quality
    for metric in ("id_val_acc", "ood_mean"):
        assert quality[metric]["r2"] > 0.8 and quality[metric]["spearman_final"] > 0.8, quality
    config = {"method": "ft", "lr": 3e-3}
    mean = surrogate.mean_curve(config)
    expected = [truth(config, e) for e in range(1, EVALUATIONS + 1)]
    assert np.allclose(mean["id_val_acc"], [e[0] for e in expected], atol=0.02)
    assert np.allclose(mean["ood_mean"], [e[1] for e in expected], atol=0.02)


def test_a_curve_is_the_same_for_a_seed_and_differs_across_seeds(surrogate):
    config = {"method": "l2sp", "lr": 1e-3, "strength": 0.1}
    first, again, other = surrogate.curve(config, 7), surrogate.curve(config, 7), surrogate.curve(config, 8)
    assert first == again and first != other
    assert [row["evaluation"] for row in first] == [1, 2, 3] and first[-1]["status"] == "complete"
    assert [row["step"] for row in first] == [10, 20, 30]
    assert all(a["time_s"] <= b["time_s"] for a, b in zip(first, first[1:]))
    spread = np.std([surrogate.curve(config, s)[-1]["id_val_acc"] for s in range(200)])
    assert 0.5 * NOISE_SD < spread < 1.6 * NOISE_SD  # the measured noise, not more


def test_the_benchmark_front_dominates_the_tables_points(surrogate):
    reference, table_hv = table_reference(surrogate.table)
    assert surrogate.front_hypervolume(reference, samples=2048) > 0.9 * table_hv


def test_a_replay_on_the_continuous_benchmark_is_deterministic_for_a_seed(table_path, tmp_path, ray_local):
    arm = Arm.of("tpe", "mo_asha", grace_period=1, reduction_factor=2)
    runs = [run_replay(table_path, arm, seed, 12, tmp_path, name=name)
            for seed, name in ((3, "a"), (3, "b"), (4, "c"))]

    def evaluations(run):
        return [(row["sampled"].get("method"), row["sampled"].get("lr"), row["evaluation"], row["id_val_acc"],
                 row["ood_mean"]) for row in read_records(run.experiment) if "evaluation" in row and not row.get("final")]

    first, again, other = map(evaluations, runs)
    assert first == again and len(first) == 12
    assert first != other
    assert runs[0].curve == runs[1].curve


def test_bench_surrogate_says_the_fit_and_refuses_a_grid_table(table_path):
    import json

    from helpers import assert_one_line_exit_2, invoke

    result = invoke("bench", "surrogate", table_path, "--json")
    assert result.returncode == 0, result.stderr
    fitted = json.loads(result.stdout.strip().splitlines()[-1])
    assert fitted["points"] == 120 and fitted["noise"]["points"] == 12
    assert fitted["quality"]["id_val_acc"]["r2"] > 0.8 and fitted["front_hypervolume"] > 0.9 * fitted["table_hypervolume"]
    assert_one_line_exit_2(invoke("bench", "surrogate", "mini_full"), "a grid table; a surrogate is fitted to a table of "
                                                                      "random points (tabulated with --points)")
