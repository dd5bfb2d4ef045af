"""Warm starts: a sweep whose first trials are an earlier experiment's front, mapped onto the new space; and the
inputs it refuses before anything is created."""

import json
import logging
import shutil

import pytest
import yaml

from helpers import SYNTHETIC_SPACE, assert_one_line_exit_2, invoke, synthetic_points_table, write_space
from robusttune import api
from robusttune.bench.replay import Arm, ReplayRunner, run_replay
from robusttune.experiment import RECORDS, latest_by_trial, read_records
from robusttune.pareto import front
from robusttune.search.warm_start import load_warm_start
from robusttune.space import load_space


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, ray_local):
    """A finished search of the synthetic benchmark (random sampling, 10 trials in full) and its table."""
    root = tmp_path_factory.mktemp("warm")
    table = synthetic_points_table(root / "synthetic.parquet")
    run = run_replay(table, Arm.of("random", "none"), 0, 30, root / "runs", name="earlier")
    return run.experiment, table


def space_file(path, **changes):
    data = json.loads(json.dumps(SYNTHETIC_SPACE))
    for name, parameter in changes.items():  # None: the new space does not search it
        data["parameters"][name] = parameter
        if parameter is None:
            del data["parameters"][name]
    return write_space(path, data)


def first_trials(experiment, count):
    """The sampled values of the first ``count`` trials, in the order they started."""
    order = []
    for row in read_records(experiment):
        if "trial_id" in row and row["trial_id"] not in order:
            order.append(row["trial_id"])
    latest = latest_by_trial(experiment)
    return [{k: v for k, v in latest[t]["sampled"].items() if k != "seed"} for t in order[:count]]


def test_a_warm_started_sweep_first_runs_the_earlier_front(earlier, tmp_path):
    source, table = earlier
    rows = list(latest_by_trial(source).values())
    expected = {json.dumps({k: v for k, v in rows[i]["sampled"].items() if k != "seed"}, sort_keys=True)
                for i in front(rows, ["id_val_acc", "ood_mean"])}
    space = space_file(tmp_path / "space.yaml")
    warm = load_warm_start(source, load_space(str(space))[0])
    assert {json.dumps(p, sort_keys=True) for p in warm.points} == expected and len(warm.points) == len(expected)
    trials = len(expected) + 2
    result = api.sweep(space, storage=tmp_path / "runs", name="warm", trials=trials, concurrency=1, verbose=0,
                       runner=ReplayRunner(table=str(table)), warm_start=source)
    assert first_trials(result.experiment, len(warm.points)) == [dict(p) for p in warm.points]
    assert len(latest_by_trial(result.experiment)) == trials  # the warm start used the budget's first slots
    manifest = json.loads((result.experiment / "manifest.json").read_text())
    assert manifest["warm_start"]["source"] == str(source) and len(manifest["warm_start"]["points"]) == len(expected)
    shown = invoke("status", result.experiment)
    assert f"warm start: its first {len(expected)} trial(s) are configurations of {source}" in shown.stdout


def test_top_takes_more_than_the_front_in_rank_order(earlier, tmp_path):
    source, _ = earlier
    space = load_space(str(space_file(tmp_path / "space.yaml")))[0]
    front_only = load_warm_start(source, space)
    more = load_warm_start(source, space, top=len(front_only.points) + 2)
    assert len(more.points) == len(front_only.points) + 2
    assert list(more.points[:len(front_only.points)]) == list(front_only.points)


def test_values_outside_the_new_space_are_dropped_with_a_warning(earlier, tmp_path, caplog):
    source, _ = earlier
    narrow = space_file(tmp_path / "narrow.yaml", lr={"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                        method={"type": "categorical", "choices": ["ft"]}, strength=None)
    with caplog.at_level(logging.WARNING, logger="robusttune.search.warm_start"):
        warm = load_warm_start(source, load_space(str(narrow))[0], top=10)
    assert all(p.get("method", "ft") == "ft" and 1e-3 <= p.get("lr", 1e-3) <= 1e-2 for p in warm.points)
    assert all("strength" not in p for p in warm.points)  # not searched any more
    assert warm.dropped and any("is outside space" in r.getMessage() for r in caplog.records)


def refused(tmp_path, *args):
    storage = tmp_path / "runs"
    result = invoke("sweep", space_file(tmp_path / "space.yaml"), "--storage", storage, "--name", "new", *args)
    assert not (storage / "new").exists()
    return result


def test_a_missing_or_non_experiment_folder_is_refused(tmp_path):
    assert_one_line_exit_2(refused(tmp_path, "--warm-start", tmp_path / "missing"),
                           "--warm-start names no experiment: ")
    assert_one_line_exit_2(refused(tmp_path, "--warm-start", tmp_path / "missing"), "experiment directory not found")
    (tmp_path / "plain").mkdir()
    assert_one_line_exit_2(refused(tmp_path, "--warm-start", tmp_path / "plain"), "not a robusttune experiment")


def test_an_experiment_with_no_complete_trial_is_refused(earlier, tmp_path):
    copy = tmp_path / "unfinished"
    shutil.copytree(earlier[0], copy)
    rows = [json.loads(line) for line in (copy / RECORDS).read_text().splitlines()]
    (copy / RECORDS).write_text("".join(json.dumps({**r, "status": "failed"} if r.get("final") else r) + "\n" for r in rows))
    assert_one_line_exit_2(refused(tmp_path, "--warm-start", copy), "no complete trial to start from")


def test_a_space_with_no_shared_parameter_is_refused(earlier, tmp_path):
    data = {**SYNTHETIC_SPACE, "parameters": {"weight_decay": {"type": "float", "low": 0.01, "high": 0.1}}}
    space = write_space(tmp_path / "other.yaml", yaml.safe_load(yaml.safe_dump(data)))
    result = invoke("sweep", space, "--storage", tmp_path / "runs", "--name", "new", "--warm-start", earlier[0])
    assert_one_line_exit_2(result, "shares no searched parameter")
    assert not (tmp_path / "runs" / "new").exists()


def test_top_without_a_warm_start_or_below_one_is_refused(earlier, tmp_path):
    assert_one_line_exit_2(refused(tmp_path, "--top", "3"), "--top needs --warm-start")
    assert_one_line_exit_2(refused(tmp_path, "--warm-start", earlier[0], "--top", "0"), "--top must be >= 1")
    assert_one_line_exit_2(refused(tmp_path, "--warm-start", earlier[0], "--top", "9", "--trials", "4"),
                           "pass a smaller --top or more --trials")


@pytest.mark.slow
def test_the_botorch_sampler_searches_after_its_startup_trials(earlier, tmp_path):
    import optuna
    from optuna_integration import BoTorchSampler

    from robusttune.experiment import journal
    from robusttune.search.samplers import make_sampler

    _, table = earlier
    data = {**SYNTHETIC_SPACE, "sampler": {"name": "botorch", "seed": 0, "options": {"n_startup_trials": 2}}}
    space = write_space(tmp_path / "botorch.yaml", yaml.safe_load(yaml.safe_dump(data)))
    from optuna_integration.botorch import qnehvi_candidates_func

    sampler = make_sampler(load_space(str(space))[0], 0)
    assert isinstance(sampler, BoTorchSampler) and sampler._candidates_func is qnehvi_candidates_func
    result = api.sweep(space, storage=tmp_path / "runs", name="bo", trials=3, concurrency=1, verbose=0,
                       runner=ReplayRunner(table=str(table)))  # the third trial is BoTorch's (qNEHVI)
    assert result.counts.get("complete") == 3
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="bo", storage=JournalStorage(JournalFileBackend(str(journal(result.experiment)))))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3


def test_the_botorch_sampler_without_its_packages_is_one_line(monkeypatch, tmp_path):
    import sys

    from robusttune.errors import ConfigError
    from robusttune.search.samplers import make_sampler

    monkeypatch.setitem(sys.modules, "optuna_integration", None)
    data = {**SYNTHETIC_SPACE, "sampler": {"name": "botorch", "seed": 0}}
    space = load_space(str(write_space(tmp_path / "botorch.yaml", yaml.safe_load(yaml.safe_dump(data)))))[0]
    with pytest.raises(ConfigError, match=r"pip install 'robusttune\[botorch\]'"):
        make_sampler(space, 0)
