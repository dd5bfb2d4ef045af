"""Sweeps through the real path: a local Ray instance, Optuna's journal on disk, our records."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_exit_2, invoke, records, tiny_space, write_space

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nan_grid_experiment(tmp_path_factory, tiny_world_config, tiny_prepared, cache_dir, nan_midway):
    """Two trials from a grid: one whose loss turns NaN at step 3 (the ``nan_midway`` fault), one healthy."""
    root = tmp_path_factory.mktemp("sweeps")
    space = tiny_space(tiny_world_config, sampler={"name": "grid", "seed": 0},
                       parameters={"lr": {"type": "categorical", "choices": [0.001, nan_midway.lr]}},
                       budget={"trials": 2, "concurrency": 1})
    space["fixed"].pop("lr")
    result = invoke("sweep", write_space(root / "nan.yaml", space), "--storage", root, "--name", "nan", "--json",
                 cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "nan", json.loads(result.stdout.strip().splitlines()[-1])


def test_a_nan_trial_is_recorded_failed_and_the_sweep_finishes(nan_grid_experiment, nan_midway):
    experiment, summary = nan_grid_experiment
    assert summary["counts"]["complete"] == 1 and summary["counts"]["failed"] == 1
    rows = records(experiment)
    failed = [r for r in rows if r.get("status") == "failed" and r.get("final")]
    assert len(failed) == 1 and "non-finite loss" in failed[0]["failure"] and failed[0]["sampled"]["lr"] == nan_midway.lr
    complete = [r for r in rows if r.get("status") == "complete" and r.get("final")]
    assert complete[0]["sampled"]["lr"] == 0.001 and complete[0]["step"] == 4
    # every reported evaluation is a row, with the full validated config and every metric
    running = [r for r in rows if r.get("status") == "running"]
    assert {"id_acc", "id_val_acc", "ood_background", "ood_source", "ood_style", "ood_mean", "objective"} <= set(running[0])
    assert running[0]["config"]["batch_size"] == 16 and running[0]["config"]["method"]["region"] == "object"
    # the config in the records is the one the trainable built and wrote beside the trial's checkpoints
    for row in rows:
        if row.get("trial_id"):
            written = json.loads((experiment / "checkpoints" / row["trial_id"] / "config.json").read_text())
            assert row["config"] == written and written["lr"] == row["sampled"]["lr"]
    # the study lives in an Optuna journal the dashboard can open, and Optuna agrees about the failure
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="nan", storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))))
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL"]
    assert (experiment / "manifest.json").is_file() and (experiment / "space.yaml").is_file()
    # WiSE-FT baselines ran once: zero-shot, vanilla FT, and alpha grids for vanilla FT and the Pareto trial
    everything = records(experiment, trials_only=False)
    methods = sorted(r["method"] for r in everything if r.get("kind") == "baseline")
    assert methods == ["vanilla-ft", "zero-shot"]
    wise = [r for r in everything if r.get("kind") == "wise"]
    sources = {r["source"] for r in wise}
    assert sources == {"vanilla-ft", complete[0]["trial_id"]}
    assert sorted(r["alpha"] for r in wise if r["source"] == "vanilla-ft") == [round(0.1 * i, 1) for i in range(11)]
    at_one = next(r for r in wise if r["source"] == complete[0]["trial_id"] and r["alpha"] == 1.0)
    assert at_one["id_acc"] == pytest.approx(complete[0]["id_acc"])  # alpha 1 is the trial's own final weights
    assert summary["pareto"] and summary["pareto"][0]["status"] == "complete"


def test_status_reads_files_without_ray(nan_grid_experiment, cache_dir):
    experiment, _ = nan_grid_experiment
    result = invoke("status", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["counts"] == {"running": 0, "complete": 1, "stopped-early": 0, "failed": 1}
    assert len(payload["trials"]) == len({t["trial_id"] for t in payload["trials"]}) == 2
    assert all({"trial_id", "status", "id_acc", "ood_mean"} <= set(t) for t in payload["trials"] if t["status"] == "complete")
    code = "import sys, robusttune as rt; rt.status(sys.argv[1]); print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code, str(experiment)], capture_output=True, text=True).stdout.strip() == "False"


def test_existing_experiment_is_never_overwritten(nan_grid_experiment, cache_dir, tiny_world_config, tmp_path):
    experiment, _ = nan_grid_experiment
    before = (experiment / "records.jsonl").read_text()
    result = invoke("sweep", write_space(tmp_path / "s.yaml", tiny_space(tiny_world_config)), "--storage", experiment.parent,
                 "--name", experiment.name, cache_dir=cache_dir)
    assert result.returncode == 2 and "experiment already exists" in result.stderr
    assert (experiment / "records.jsonl").read_text() == before


def test_kill_9_then_resume_keeps_finished_trials(tmp_path, tiny_world_config, tiny_prepared, cache_dir, kill_9_when,
                                                  ray_local):
    space = tiny_space(tiny_world_config, fixed={"steps": 24, "batch_size": 16, "eval_every": 8, "eval_batch_size": 128,
                                                  "lr": 1e-3}, budget={"trials": 3, "concurrency": 1})
    space_file = write_space(tmp_path / "kill.yaml", space)
    experiment = tmp_path / "runs" / "kill"
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}

    def one_finished_one_in_flight() -> bool:
        rows = records(experiment) if (experiment / "records.jsonl").exists() else []
        done = {r["trial_id"] for r in rows if r.get("final") and "trial_id" in r}
        return bool(done and {r["trial_id"] for r in rows if r.get("status") == "running" and r["trial_id"] not in done})

    kill_9_when(["sweep", space_file, "--storage", tmp_path / "runs", "--name", "kill"], env, one_finished_one_in_flight,
                timeout=300, never="the sweep never reached a finished trial plus one in flight")
    before = records(experiment)
    finished_before = {r["trial_id"]: r for r in before if r.get("final")}
    steps_before = {}
    for r in before:
        steps_before.setdefault(r["trial_id"], []).append(r.get("step", 0))

    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["counts"]["complete"] == 3

    after = records(experiment)
    status = json.loads(invoke("status", experiment, "--json", cache_dir=cache_dir).stdout.strip().splitlines()[-1])
    ids = [t["trial_id"] for t in status["trials"]]
    assert len(ids) == len(set(ids))  # no trial id twice
    assert status["counts"]["complete"] == 3 and status["counts"]["running"] == 0
    for trial_id, row in finished_before.items():  # finished work is kept, with the same metrics
        final = [r for r in after if r["trial_id"] == trial_id and r.get("final")][-1]
        assert final["id_acc"] == row["id_acc"] and final["ood_mean"] == row["ood_mean"]
    lost = {t["trial_id"] for t in status["trials"] if "before Ray Tune saved" in (t.get("failure") or "")}
    for trial_id, steps in steps_before.items():  # an in-flight trial lost at most one evaluation interval
        if trial_id in finished_before or trial_id in lost:
            continue
        resumed_steps = [r["step"] for r in after[len(before):] if r["trial_id"] == trial_id]
        assert resumed_steps and min(resumed_steps) >= max(steps)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="kill", storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))))
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def test_resume_refuses_what_it_cannot_restore(tmp_path, cache_dir):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "manifest.json").write_text('{"runner": {"kind": "train"}}')
    (tmp_path / "exp" / "space.yaml").write_text("name: x\n")
    result = invoke("resume", tmp_path / "exp", cache_dir=cache_dir)
    assert result.returncode == 1 and "no restorable Ray Tune state" in result.stderr
    (tmp_path / "exp" / "manifest.json").write_text("{}")  # a manifest that says nothing of how its trials ran
    result = invoke("resume", tmp_path / "exp", cache_dir=cache_dir)
    assert_one_line_exit_2(result, "manifest names no trial runner robusttune knows")
    # nothing made but the lock file, which stays once made (it is never unlinked, so that it excludes)
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [".lock", "manifest.json", "space.yaml"]


def test_asha_stops_trials_early_and_records_say_so(tmp_path, tiny_world_config, tiny_prepared, cache_dir, ray_local):
    # the default world (shipped weights): learning rates from harmless to destructive give trials that differ
    space = tiny_space(tiny_world_config, task={}, fixed={"steps": 8, "batch_size": 16, "eval_every": 4,
                                                          "eval_batch_size": 512, "region": "none", "w_distill": 0.0},
                       parameters={"lr": {"type": "float", "low": 1e-5, "high": 0.05, "log": True}},
                       scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
                       budget={"trials": 5, "concurrency": 1})
    # through the API, without the baselines (this test is about the scheduler; the NaN sweep covers baselines)
    import robusttune as rt
    from robusttune.search.trainable import TrainingRunner

    result = rt.sweep(write_space(tmp_path / "asha.yaml", space), storage=tmp_path, name="asha", verbose=0,
                      cache_dir=cache_dir, runner=TrainingRunner(cache_dir, baselines=False))
    finals = [r for r in records(tmp_path / "asha") if r.get("final")]
    assert len(finals) == 5
    for row in finals:
        assert (row["status"] == "stopped-early") == (row["step"] < row["total_steps"]), row
    stopped = [r for r in finals if r.get("status") == "stopped-early"]
    assert stopped, "ASHA stopped no trial in this seeded sweep"
    assert result.counts["stopped-early"] == len(stopped)
    assert all(row["status"] == "complete" for row in result.pareto)  # stopped trials stay off the front


def test_report_on_a_real_sweep_has_baselines_and_gallery(nan_grid_experiment, cache_dir):
    experiment, _ = nan_grid_experiment
    result = invoke("report", experiment, "--json", "--cache-dir", cache_dir, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"index.html", "pareto.png", "trials.csv", "front.csv", "gallery_best_ood.png"} <= set(summary["files"])
    assert summary["front_size"] == 1 and "vanilla_ft" in summary and "zero_shot" in summary
    page = (experiment / "report" / "index.html").read_text()
    assert "Counterfactual gallery" in page and "WiSE-FT of vanilla FT" in page
    # the merges of its one complete trial: both soups are that trial (Model Stock, which needs two, is skipped)
    (healthy,) = [r for r in records(experiment) if r.get("final") and r["status"] == "complete"]
    merges = {r["method"]: r for r in records(experiment, trials_only=False) if r.get("kind") == "merge"}
    assert set(merges) == {"uniform_soup", "greedy_soup"}
    for merge in merges.values():
        assert merge["members"] == [healthy["trial_id"]]
        assert merge["ood_mean"] == pytest.approx(healthy["ood_mean"]) and merge["id_acc"] == pytest.approx(healthy["id_acc"])
    assert {m["method"] for m in summary["merges"]} == set(merges) and "merges.csv" in summary["files"]
    assert "Merges of the sweep's models" in page and "greedy soup" in page


@pytest.mark.parametrize("scheduler", ["mo_asha", "asha", "none"])
def test_a_nan_before_the_first_evaluation_fails_only_that_trial(scheduler, tmp_path, tiny_world_config, tiny_prepared,
                                                                   cache_dir, nan_at_start):
    space = tiny_space(tiny_world_config, sampler={"name": "grid", "seed": 0},
                       parameters={"lr": {"type": "categorical", "choices": [0.001, nan_at_start.lr]}},
                       scheduler={"name": scheduler, "grace_period": 1, "reduction_factor": 2},
                       budget={"trials": 2, "concurrency": 1}, baselines={"wise_alphas": [0.0, 1.0]})
    space["fixed"].pop("lr")
    result = invoke("sweep", write_space(tmp_path / "s.yaml", space), "--storage", tmp_path, "--name", "nan0", "--json",
                 cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])["counts"]
    assert counts["failed"] == 1 and counts["complete"] == 1, counts
    status = json.loads(invoke("status", tmp_path / "nan0", "--json", cache_dir=cache_dir).stdout.strip().splitlines()[-1])
    failed = [t for t in status["trials"] if t["status"] == "failed"]
    assert len(failed) == 1 and "non-finite loss" in failed[0]["failure"] and "step 0" in failed[0]["failure"]
    assert failed[0]["lr"] == nan_at_start.lr
    json.dumps(records(tmp_path / "nan0"), allow_nan=False)  # records stay strict JSON (no NaN written)


def test_first_ctrl_c_stops_the_sweep_resumably_and_a_copy_resumes_on_its_own(tmp_path, tiny_world_config,
                                                                             tiny_prepared, cache_dir, ray_local):
    import signal
    import time

    space = tiny_space(tiny_world_config, fixed={"steps": 16, "batch_size": 16, "eval_every": 8, "eval_batch_size": 128,
                                                  "lr": 1e-3}, budget={"trials": 2, "concurrency": 1},
                       baselines={"wise_alphas": [0.0, 1.0]})
    experiment = tmp_path / "runs" / "ctrlc"
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    driver = subprocess.Popen([sys.executable, "-m", "robusttune.cli", "sweep", write_space(tmp_path / "c.yaml", space),
                               "--storage", tmp_path / "runs", "--name", "ctrlc"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (
                (experiment / "records.jsonl").exists() and any(r.get("evaluation") for r in records(experiment))):
            time.sleep(0.3)
        driver.send_signal(signal.SIGINT)  # the user's Ctrl-C, to the driver alone
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, err[-3000:]
    assert f"robusttune resume {experiment}" in err.strip().splitlines()[-1]
    before = records(experiment, trials_only=False)
    assert not [r for r in before if r.get("kind")], "the baselines ran after the interrupt"
    # the experiment directory is self-contained: a copy resumed from another working directory writes only into
    # the copy (Tune's pickled callbacks, scheduler and study would point at the original)
    import shutil

    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(experiment, copy)
    original = {p: p.read_bytes() for p in sorted(experiment.rglob("*")) if p.is_file()}
    for log in ("optuna.journal", "records.jsonl"):  # and torn tails (a crash mid-append) swallow nothing
        with open(copy / log, "ab") as stream:
            stream.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "sta')
    (tmp_path / "cwd").mkdir()
    result = invoke("resume", Path("..") / "elsewhere" / "copied", "--json", cwd=tmp_path / "cwd",
                    env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["counts"]["complete"] == 2
    assert {p: p.read_bytes() for p in sorted(experiment.rglob("*")) if p.is_file()} == original
    finished = {r["trial_id"]: r for r in before if r.get("final") and r.get("status") == "complete"}
    after = records(copy)
    assert [r for r in records(copy, trials_only=False) if r.get("kind") == "wise"], "the copy's baselines ran"
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="ctrlc", storage=JournalStorage(JournalFileBackend(str(copy / "optuna.journal"))))
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
    for trial_id, row in finished.items():  # nothing finished before the interrupt was redone or lost
        assert [r for r in after if r["trial_id"] == trial_id and r.get("final")][-1]["ood_mean"] == row["ood_mean"]


def _study_states(experiment: Path) -> list[str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(experiment / "optuna.journal")))
    return [t.state.name for t in optuna.load_study(study_name=experiment.name, storage=storage).trials]


def _curves_complete_once(experiment: Path, alphas: list[float]) -> None:
    """Every curve complete as the analysis reads it: each point once (the killed driver's baselines task may still
    have finished a row the resumed one also wrote; readers keep the last, as for evaluations)."""
    from robusttune.analysis import results

    refs = results.baselines(experiment)
    assert sorted(refs[refs["kind"] == "baseline"]["method"]) == ["vanilla-ft", "zero-shot"]
    wise = refs[refs["kind"] == "wise"]
    assert not wise.duplicated(["source", "alpha"]).any()
    assert wise["source"].nunique() >= 2  # vanilla FT and at least one Pareto trial
    for source, curve in wise.groupby("source"):
        assert sorted(curve["alpha"]) == alphas, source
    assert sorted(refs[refs["kind"] == "merge"]["method"]) == ["greedy_soup", "model_stock", "uniform_soup"]


@pytest.mark.parametrize("moment", ["during the baselines", "before Tune's first state save"])
def test_kill_9_at_any_moment_then_resume_finishes_everything(moment, tmp_path, tiny_world_config, tiny_prepared,
                                                              cache_dir, kill_9_when, ray_local):
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    space = tiny_space(tiny_world_config, budget={"trials": 2, "concurrency": 1}, baselines={"wise_alphas": alphas})
    experiment = tmp_path / "runs" / "k"
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}

    def baselines_started() -> bool:
        return (experiment / "records.jsonl").exists() and any(r.get("kind") == "wise" for r in
                                                                 records(experiment, trials_only=False))

    def experiment_created() -> bool:
        return (experiment / "manifest.json").exists()

    ready = baselines_started if moment == "during the baselines" else experiment_created
    kill_9_when(["sweep", write_space(tmp_path / "k.yaml", space), "--storage", tmp_path / "runs", "--name", "k"], env,
                ready, timeout=240, never=f"the sweep never got to the moment {moment}")
    if moment != "during the baselines":
        assert not list((experiment / "tune").glob("experiment_state*")) if (experiment / "tune").exists() else True
    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])["counts"]
    assert counts["complete"] == 2 and counts["running"] == 0, counts
    assert "RUNNING" not in _study_states(experiment)
    _curves_complete_once(experiment, alphas)
