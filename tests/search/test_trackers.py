"""Experiment trackers (offline) and heartbeats: progress between evaluations that never counts as an evaluation."""

import json
import re
import sys
import types

import pytest
from helpers import invoke

from robusttune.search.trainable import heartbeat_result


def test_a_heartbeat_passes_the_schedulers_and_the_searcher_by():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from robusttune.search.mo_asha import MultiObjectiveASHA
    from robusttune.space import SearchSpace

    space = SearchSpace()
    beat = heartbeat_result(space, {}, {"step": 3, "total_steps": 8, "epoch": 0.1, "loss": 1.5, "images_per_s": 90.0,
                                        "eta_s": 12.0})
    assert "evaluation" not in beat and beat["heartbeat"] is True
    assert all(m in beat for m in space.objective.metrics) and "objective" in beat  # Tune's strict metric check
    trial = types.SimpleNamespace(trial_id="t1", config={}, evaluated_params={})
    asha = ASHAScheduler(metric="objective", mode="max", time_attr="evaluation", grace_period=1, max_t=4)
    asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, trial, beat) == TrialScheduler.CONTINUE
    mo = MultiObjectiveASHA(list(space.objective.metrics), ["max", "max"], time_attr="evaluation", grace_period=1,
                            reduction_factor=2, max_t=4)
    assert mo.on_trial_result(None, trial, {**beat, "evaluation": 1}) == TrialScheduler.CONTINUE
    later = heartbeat_result(space, {"id_val_acc": 0.5, "ood_mean": 0.25, "id_acc": 0.5}, {**beat, "step": 5})
    assert later["id_val_acc"] == 0.5 and later["objective"] == pytest.approx(space.objective.scalar(later))


def test_a_missing_tracker_package_is_a_one_line_error_before_anything_starts(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    result = invoke("sweep", "demo", "--storage", str(tmp_path), "--name", "x", "--logger", "wandb")
    assert result.returncode == 2
    assert result.stderr.strip() == "robusttune: error: --logger wandb needs the 'wandb' package: pip install 'robusttune[wandb]'"
    assert not (tmp_path / "x").exists()
    bad = invoke("sweep", "demo", "--storage", str(tmp_path), "--logger", "neptune")
    assert bad.returncode == 2 and "invalid choice: 'neptune'" in bad.stderr


def dashboard_states(journal) -> list[str]:
    """Trial states as optuna-dashboard's web API serves them, from its own storage loader."""
    import io
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi
    from optuna_dashboard._storage_url import get_storage

    app = wsgi(get_storage(str(journal)))

    def get(path: str):
        environ, answer = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}, {}
        setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda status, headers, *_: answer.setdefault("status", status)))
        assert answer["status"].startswith("200"), (path, answer)
        return json.loads(body)

    (study,) = get("/api/studies")["study_summaries"]
    return [trial["state"] for trial in get(f"/api/studies/{study['study_id']}")["trials"]]


@pytest.mark.slow
def test_trackers_and_heartbeats_on_a_mo_asha_sweep(tmp_path, tiny_world_config, tiny_prepared, cache_dir, ray_local):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from helpers import records, tiny_space, write_space

    space = tiny_space(tiny_world_config, fixed={"steps": 8, "batch_size": 16, "eval_every": 4, "eval_batch_size": 128,
                                                 "lr": 1e-3},
                       scheduler={"name": "mo_asha", "grace_period": 1, "reduction_factor": 2})
    result = invoke("sweep", str(write_space(tmp_path / "s.yaml", space)), "--storage", str(tmp_path), "--name", "tracked",
                    "--logger", "tensorboard", "--logger", "mlflow", "--logger", "wandb", "--heartbeat", "0",
                    env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir), "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "tracked"
    # the driver shows the heartbeats, one compact line each
    beats = re.findall(r"^trial (\S+)  step (\d+)/8  loss \d+\.\d{4}  \d+ img/s  ETA \d+m\d\ds$", result.stderr, re.M)
    assert len({trial for trial, _ in beats}) == 3 and {int(step) for _, step in beats} >= {1, 2, 3}
    # ... which are no evaluations: records hold evaluation rows only (every 4 steps), the study no heartbeat values
    rows = records(experiment)
    # the console: one line per trial event, and none of Ray Tune's boxed tables (those come with --verbose)
    finals = {r["trial_id"]: r for r in rows if r.get("final")}
    shown = result.stdout + result.stderr
    assert "╭" not in shown and "Trial status" not in shown
    for trial_id, final in finals.items():
        (started,) = re.findall(rf"^trial {trial_id} started: (.*)$", result.stderr, re.M)
        assert dict(pair.split("=") for pair in started.split()) == {
            "w_distill": f"{final['sampled']['w_distill']:.3g}", "region": final["sampled"]["region"]}, started
        evaluated = re.findall(rf"^trial {trial_id} evaluation (\d) \(step (\d)/8\): id_val_acc (\d+\.\d) "
                               rf" ood_mean (\d+\.\d)$", result.stderr, re.M)
        done = [r["evaluation"] for r in rows if r["trial_id"] == trial_id and not r.get("final")
                and r["status"] != "failed"]
        # its first evaluation, then at most one every 30 s (these trials take seconds)
        assert [int(n) for n, *_ in evaluated] == done[:1]
        ending = {"complete": "complete: ", "stopped-early": "stopped by the scheduler after evaluation 1 (step 4/8): ",
                  "failed": "failed: "}[final["status"]]
        assert len(re.findall(rf"^trial {trial_id} {re.escape(ending)}", result.stderr, re.M)) == 1, result.stderr
    assert rows and all("heartbeat" not in r and "loss" not in r for r in rows)
    assert all(r["step"] % 4 == 0 for r in rows if r.get("status") != "failed")
    study = optuna.load_study(study_name="tracked", storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))))
    assert len(study.trials) == 3 and all(len(t.intermediate_values) <= 2 for t in study.trials)
    # optuna-dashboard opens the journal as `optuna-dashboard EXP/optuna.journal` does, and serves the states we recorded
    finals = {r["trial_id"]: r["status"] for r in rows if r.get("final")}
    expected = sorted({"complete": "Complete", "stopped-early": "Pruned", "failed": "Fail"}[s] for s in finals.values())
    assert sorted(dashboard_states(experiment / "optuna.journal")) == expected
    # MLflow: one run per trial, the sampled config as params, heartbeats as a per-step 'loss' series
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(experiment / 'mlflow.db').resolve()}")
    (mlflow_experiment,) = [e for e in client.search_experiments() if e.name == "tracked"]
    runs = client.search_runs([mlflow_experiment.experiment_id])
    assert len(runs) == 3 and all("w_distill" in run.data.params for run in runs)
    assert all(len(client.get_metric_history(run.info.run_id, "loss")) >= 3 for run in runs)
    assert all(len(client.get_metric_history(run.info.run_id, "id_val_acc")) >= 1 for run in runs)
    # TensorBoard event files beside each trial; W&B offline runs in the experiment
    assert len(list((experiment / "tune").glob("*/events.out.tfevents.*"))) == 3
    assert len(list((experiment / "wandb").glob("offline-run-*"))) == 3
    # the closing lines say where the trackers wrote
    assert f"mlflow logs: sqlite:///{(experiment / 'mlflow.db').resolve()}" in result.stdout
    # ended trials keep lean checkpoints (the default policy 'best'): weights, no optimizer state
    from robusttune.training.checkpoint import load_checkpoint

    for trial_id, status in finals.items():
        assert "optimizer" not in load_checkpoint(experiment / "checkpoints" / trial_id / "latest.pt"), status
        assert set(load_checkpoint(experiment / "checkpoints" / trial_id / "best.pt")) == {"format", "model", "step", "config"}
    # the driver kept each trial's latest heartbeat for `robusttune status` (shown for running trials only)
    beats = json.loads((experiment / "heartbeats.json").read_text())
    assert set(beats) == set(finals) and all(b["total_steps"] == 8 and b["step"] < 8 for b in beats.values())
    assert "progress" in json.loads(invoke("status", str(experiment), "--json").stdout.splitlines()[-1])
    with (experiment / "records.jsonl").open("a") as stream:  # as if one trial were still running
        stream.write(json.dumps({"trial_id": "live", "status": "running", "step": 4, "evaluation": 1}) + "\n")
    (experiment / "heartbeats.json").write_text(json.dumps({**beats, "live": {"step": 6, "total_steps": 8, "loss": 0.5,
                                                                               "images_per_s": 40.0, "eta_s": 130, "time": 0}}))
    shown = invoke("status", str(experiment))
    assert shown.returncode == 0 and "trial live: step 6/8, loss 0.5000, 40 img/s, ETA 2m" in shown.stdout
    assert sum(line.startswith("trial ") for line in shown.stdout.splitlines()) == 1  # ended trials show none
    manifest = json.loads((experiment / "manifest.json").read_text())
    assert manifest["loggers"] == ["tensorboard", "mlflow", "wandb"]


@pytest.mark.slow
def test_a_trials_warning_reaches_the_console(tmp_path, tiny_world_config, tiny_prepared, cache_dir, faults):
    import os
    import subprocess

    from helpers import tiny_space, write_space

    space = tiny_space(tiny_world_config, parameters={"lr": {"type": "categorical", "choices": [0.001]}},
                       budget={"trials": 1, "concurrency": 1})
    space["fixed"].pop("lr")
    env = {**os.environ, **faults.nan_loss((1, None)), "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    env.pop("RAY_ADDRESS", None)
    sweep = subprocess.run([sys.executable, "-m", "robusttune.cli", "sweep", str(write_space(tmp_path / "s.yaml", space)),
                            "--storage", str(tmp_path), "--name", "warns"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    shown = sweep.stdout + sweep.stderr
    # the console says it in robusttune's words; Ray's prefixed worker line goes to the experiment's log, uncoloured
    assert re.search(r"(?m)^trial \S+ failed: non-finite loss \(nan\) at step 1", shown), shown[-3000:]
    assert " pid=" not in shown, shown[-3000:]
    logged = (tmp_path / "warns" / "robusttune.log").read_text()
    assert re.search(r"\(robusttune_trial pid=\d+\) trial \S+ failed: non-finite loss \(nan\) at step 1", logged), logged[-3000:]
