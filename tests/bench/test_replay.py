"""The replay trainable on the shipped table, outside Ray: what it reports, and what it reports after a crash."""

import json
from types import SimpleNamespace

import pytest

from robusttune.bench import replay
from robusttune.bench.replay import Arm, replay_space, replay_trial, resolve_table
from robusttune.bench.table import read_table
from robusttune.experiment import trial_checkpoints

TRIAL = "t0"


@pytest.fixture
def fake_tune(monkeypatch):
    """Stands in for Ray Tune's session: collects what the trainable reports."""
    reported = []
    fake = SimpleNamespace(report=lambda metrics: reported.append(dict(metrics)),
                           get_context=lambda: SimpleNamespace(get_trial_id=lambda: TRIAL))
    monkeypatch.setattr(replay, "tune", fake)
    return reported


@pytest.fixture(scope="module")
def shipped():
    path = resolve_table("mini_full")
    table = read_table(path)
    _, space_yaml = replay_space(table, Arm.of("random", "none"), seed=0, trials=1)
    point, curve = next(iter(table.curves.items()))
    config = {k: curve[0][k] for k in table.grid}
    return path, table, space_yaml, point, curve, config


def replay_first_point(shipped, experiment):
    path, _, space_yaml, _, _, config = shipped
    replay_trial(config, table=str(path), space_yaml=space_yaml, experiment=str(experiment))


def test_a_replayed_trial_reports_its_grid_points_curve(shipped, fake_tune, tmp_path):
    _, table, _, point, curve, _ = shipped
    replay_first_point(shipped, tmp_path)
    assert [r["evaluation"] for r in fake_tune] == [row["evaluation"] for row in curve] == list(range(1, table.evaluations + 1))
    assert all(r["table_point"] == point for r in fake_tune)
    assert [r["ood_mean"] for r in fake_tune] == [row["ood_mean"] for row in curve]
    assert [r["trial_status"] for r in fake_tune] == ["running"] * (len(curve) - 1) + ["complete"]


def test_a_trial_resumed_midway_reports_its_last_evaluation_again_then_the_rest(shipped, fake_tune, tmp_path):
    *_, curve, _ = shipped
    progress = trial_checkpoints(tmp_path, TRIAL) / "replay.json"
    progress.parent.mkdir(parents=True)
    progress.write_text(json.dumps({"evaluation": 2}))
    replay_first_point(shipped, tmp_path)
    assert [r["evaluation"] for r in fake_tune] == [row["evaluation"] for row in curve[1:]]


def test_a_trial_that_finished_before_a_crash_reports_its_last_evaluation_again(shipped, fake_tune, tmp_path):
    # Tune restarts a trial whose end it never saw; returning without a report would hand the searcher a result
    # without its metrics, which Tune rejects (the crash CI once hit after kill -9 + resume).
    _, _, space_yaml, _, curve, _ = shipped
    progress = trial_checkpoints(tmp_path, TRIAL) / "replay.json"
    progress.parent.mkdir(parents=True)
    progress.write_text(json.dumps({"evaluation": len(curve)}))
    replay_first_point(shipped, tmp_path)
    assert len(fake_tune) == 1
    again = fake_tune[0]
    assert again["evaluation"] == len(curve) and again["trial_status"] == "complete"
    assert again["id_val_acc"] == curve[-1]["id_val_acc"] and again["ood_mean"] == curve[-1]["ood_mean"]
