"""Drills of the unlucky moments a lab's sweep meets: a kill exactly between a trial's end and Tune's next state save,
the signals clusters and schedulers send, a disk that fills up, read-only places, a partial copy, Ray that cannot
start. Each drives the real driver (a subprocess where a signal or a kill is involved) and checks exit codes, the one
line a person reads, that nothing recorded is lost and that no process is left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Faults, invoke, snapshot
from helpers import records, tiny_space, write_space

pytestmark = pytest.mark.slow


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def study_states(experiment: Path) -> list[str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(experiment / "optuna.journal")))
    return [t.state.name for t in optuna.load_study(study_name=experiment.name, storage=storage).trials]


class Driver:
    """``robusttune ARGS`` as a subprocess in its own process group (as a shell, a scheduler or a pod runs it), its
    output in files (a full pipe never blocks it)."""

    def __init__(self, args, env, folder: Path):
        self.out, self.err = folder / "driver.out", folder / "driver.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "robusttune.cli", *map(str, args)], env=env,
                                            stdout=out, stderr=err, start_new_session=True)

    def wait_until(self, ready, *, timeout: float, never: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            if self.process.poll() is not None:
                pytest.fail(f"{never}: the driver exited with {self.process.returncode}: {self.stderr()[-2000:]}")
            time.sleep(0.2)
        pytest.fail(never)

    def finish(self, timeout: float = 180) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not exit within {timeout} s: {self.stderr()[-2000:]}")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def survivors(self, grace: float = 15.0) -> list[str]:
        """Processes of the driver's process group still alive ``grace`` s after it exited (Ray's included)."""
        deadline = time.time() + grace
        while True:
            alive = [line for line in subprocess.run(["ps", "-o", "pid=,args=", "-g", str(self.process.pid)],
                                                     capture_output=True, text=True).stdout.splitlines() if line.strip()]
            if not alive or time.time() > deadline:
                return alive
            time.sleep(0.5)

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait()


@pytest.fixture()
def driver(tmp_path):
    started = []

    def start(args, env):
        started.append(Driver(args, env, tmp_path))
        return started[-1]

    yield start
    for each in started:  # whatever a test asserted, no process of its sweep outlives it
        each.kill_group()


def sweep_env(cache_dir, **extra) -> dict[str, str]:
    return {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir), **extra}


def first_evaluation(experiment: Path):
    return lambda: (experiment / "records.jsonl").exists() and any(r.get("evaluation") for r in records(experiment))


def test_a_trial_that_ends_after_tunes_last_save_counts_against_the_budget(tmp_path, tiny_world_config, tiny_prepared,
                                                                          cache_dir, driver, ray_local):
    """Deterministic: Tune saves its state once (at its first step, trial 1 pending), then the driver is killed
    right after the records got trial 2's end. Trial 2 is in the records only, trial 1 in Tune's state as pending
    although it finished. The resumed sweep must end with exactly the budget's 3 complete trials (it used to run
    trial 2's slot again: 4), tell Optuna nothing twice, and keep both finished trials' results."""
    space = tiny_space(tiny_world_config, budget={"trials": 3, "concurrency": 1}, baselines={"wise_alphas": [0.0, 1.0]})
    experiment = tmp_path / "runs" / "race"
    env = sweep_env(cache_dir, **Faults.kill_after_final(2), TUNE_GLOBAL_CHECKPOINT_S="1000000")
    killed = driver(["sweep", write_space(tmp_path / "race.yaml", space), "--storage", tmp_path / "runs", "--name",
                     "race"], env)
    assert killed.finish() == -signal.SIGKILL, killed.stderr()[-2000:]
    killed.kill_group()
    ended = {r["trial_id"]: r for r in records(experiment) if r.get("final")}
    assert len(ended) == 2 and all(r["status"] == "complete" for r in ended.values())

    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(last_line(result.stdout))["counts"]
    assert counts == {"running": 0, "complete": 3, "stopped-early": 0, "failed": 0}, counts
    assert sorted(study_states(experiment)) == ["COMPLETE"] * 3
    after = {r["trial_id"]: r for r in records(experiment) if r.get("final")}
    for trial_id, row in ended.items():  # finished work kept, with its metrics
        assert after[trial_id]["ood_mean"] == row["ood_mean"] and after[trial_id]["id_val_acc"] == row["id_val_acc"]


@pytest.mark.parametrize("signals, code", [([signal.SIGTERM], 143), ([signal.SIGHUP], 129), ([signal.SIGINT], 130),
                                           ([signal.SIGINT, signal.SIGINT], 130)],
                         ids=["SIGTERM", "SIGHUP", "Ctrl-C", "two quick Ctrl-C"])
def test_the_signals_clusters_send_stop_the_sweep_resumably_and_leave_no_process(signals, code, tmp_path,
                                                                                tiny_world_config, tiny_prepared,
                                                                                cache_dir, driver, ray_local):
    space = tiny_space(tiny_world_config, fixed={"steps": 24, "batch_size": 16, "eval_every": 8, "eval_batch_size": 128,
                                                  "lr": 1e-3}, budget={"trials": 2, "concurrency": 1},
                       baselines={"wise_alphas": [0.0, 1.0]})
    experiment = tmp_path / "runs" / "sig"
    run = driver(["sweep", write_space(tmp_path / "sig.yaml", space), "--storage", tmp_path / "runs", "--name", "sig"],
                 sweep_env(cache_dir))
    run.wait_until(first_evaluation(experiment), timeout=240, never="the sweep never reported an evaluation")
    for i, number in enumerate(signals):  # to the driver alone, as Kubernetes, Slurm, timeout or a closed terminal send it
        run.process.send_signal(number)
        if i + 1 < len(signals):  # the next one once the driver has taken this one (a state, not a fixed wait)
            run.wait_until(lambda: "again to stop at once" in run.stderr(), timeout=60,
                           never="the driver never acknowledged the first Ctrl-C")
    second = time.monotonic()
    assert run.finish() == code, run.stderr()[-3000:]
    if len(signals) > 1:  # the second Ctrl-C ends the driver at once
        assert time.monotonic() - second < 15, f"the driver took {time.monotonic() - second:.1f} s after the second Ctrl-C"
    assert f"continue with: robusttune resume {experiment}" in last_line(run.stderr()), run.stderr()[-2000:]
    assert "Traceback" not in run.stderr() and "core dumped" not in run.stderr()
    # Ray's own words stay in the experiment's log: its resume hint, its workers' prefixed lines
    assert "Tuner.restore" not in run.stderr() and " pid=" not in run.stderr(), run.stderr()[-2000:]
    assert run.survivors() == [], "processes of the sweep outlived its driver"
    if signals != [signal.SIGTERM]:
        return
    assert not [r for r in records(experiment, trials_only=False) if r.get("kind")], "the baselines ran after SIGTERM"
    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(last_line(result.stdout))["counts"]["complete"] == 2
    assert "RUNNING" not in study_states(experiment)


def test_a_partial_copy_never_reads_or_writes_the_original(tmp_path, tiny_world_config, tiny_prepared, cache_dir,
                                                            driver, ray_local):
    """A ``cp -r`` of an interrupted sweep without its journal: the restored study would otherwise write into the
    original's journal. Refused in one line; neither the copy nor the original is changed. With the journal, the copy
    resumes without a word about the original (Tune's saved search state names it: new trials were made there)."""
    import shutil

    space = tiny_space(tiny_world_config, fixed={"steps": 24, "batch_size": 16, "eval_every": 8, "eval_batch_size": 128,
                                                  "lr": 1e-3}, budget={"trials": 2, "concurrency": 1})
    experiment = tmp_path / "runs" / "orig"
    run = driver(["sweep", write_space(tmp_path / "o.yaml", space), "--storage", tmp_path / "runs", "--name", "orig"],
                 sweep_env(cache_dir))
    run.wait_until(first_evaluation(experiment), timeout=240, never="the sweep never reported an evaluation")
    run.process.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.stderr()[-2000:]
    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy)
    (copy / "optuna.journal").unlink()

    original, copied = snapshot(experiment), snapshot(copy)
    result = invoke("resume", copy, cache_dir=cache_dir)
    assert result.returncode == 1 and "Optuna study is missing" in last_line(result.stderr), result.stderr[-2000:]
    assert snapshot(experiment) == original and snapshot(copy) == copied
    # with its journal back, the copy resumes on its own: its new trial (the interrupt came before Tune made it) is
    # made in the copy, and nothing Ray prints points into the original
    shutil.copy(experiment / "optuna.journal", copy / "optuna.journal")
    resumed = subprocess.run([sys.executable, "-m", "robusttune.cli", "resume", copy, "--json"], env=sweep_env(cache_dir),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(last_line(resumed.stdout))["counts"]["complete"] == 2
    assert str(experiment) not in resumed.stdout + resumed.stderr
    assert snapshot(experiment) == original


def test_ray_that_cannot_start_is_one_line_before_any_trial(tmp_path, cache_dir, read_only):
    """A read-only HOME: Ray (>= 2.59) writes its token file there on start."""
    home = read_only(tmp_path / "home")
    run = subprocess.run([sys.executable, "-m", "robusttune.cli", "sweep", "demo", "--storage", tmp_path / "runs",
                          "--name", "x"], env=sweep_env(cache_dir, HOME=str(home)), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert last_line(run.stderr).startswith("robusttune: error: could not start a local Ray") and str(home) in run.stderr
    assert not (tmp_path / "runs" / "x" / "records.jsonl").exists()


# ------------------------------------------------------------------------------------ full and read-only places


def fill(folder: Path) -> Path:
    """Fill the file system that holds ``folder`` to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * (1 << 16))
        except OSError:
            pass
    try:
        while True:
            with open(filler, "ab", buffering=0) as stream:
                stream.write(b"\0")
    except OSError:
        return filler


def test_a_disk_that_fills_mid_sweep_is_said_in_one_line_and_nothing_is_lost(small_fs, tmp_path, tiny_world_config,
                                                                              tiny_prepared, cache_dir, driver,
                                                                              ray_local):
    space = tiny_space(tiny_world_config, fixed={"steps": 24, "batch_size": 16, "eval_every": 8, "eval_batch_size": 128,
                                                  "lr": 1e-3}, budget={"trials": 2, "concurrency": 1},
                       baselines={"wise_alphas": [0.0, 1.0]})
    storage = small_fs(64)
    experiment = storage / "full"
    run = driver(["sweep", write_space(tmp_path / "f.yaml", space), "--storage", storage, "--name", "full"],
                 sweep_env(cache_dir))
    run.wait_until(first_evaluation(experiment), timeout=240, never="the sweep never reported an evaluation")
    filler = fill(storage)
    assert run.finish() == 1, run.stderr()[-3000:]
    assert last_line(run.stderr()).startswith(f"robusttune: error: no space left on {experiment}"), run.stderr()[-3000:]
    # Ray Tune's tracebacks (its event manager, its syncer) never reach the console: robusttune's lines only
    assert "Traceback" not in run.stderr() and "Tuner.restore" not in run.stderr(), run.stderr()[-3000:]
    assert all(line.startswith(("trial ", "robusttune", "WARNING robusttune")) for line in run.stderr().splitlines()
               if line.strip()), run.stderr()[-3000:]
    run.kill_group()
    from robusttune.experiment import load_records

    assert load_records(experiment).skipped == 0  # the records parse, no torn line
    failures = [r["failure"] for r in records(experiment) if r.get("status") == "failed"]
    assert all("no space left on" in failure for failure in failures), failures  # the records say so too
    study_states(experiment)  # the journal parses
    filler.unlink()  # space freed: the sweep resumes and finishes
    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(last_line(result.stdout))["counts"]["complete"] == 2


def test_train_report_and_world_prepare_into_a_full_place_say_so(small_fs, tmp_path, tiny_world_config, tiny_prepared,
                                                                 cache_dir):
    import yaml

    from robusttune.experiment import append_record, write_manifest
    from robusttune.space import load_space

    full = small_fs(4)
    fill(full)
    world, config = tmp_path / "world.yaml", tmp_path / "train.yaml"
    world.write_text(yaml.safe_dump(tiny_world_config.to_dict()))
    config.write_text(yaml.safe_dump({"world": tiny_world_config.to_dict(), "steps": 2, "batch_size": 16,
                                      "eval_batch_size": 256}))
    result = invoke("train", "--config", config, "--out", full / "run", cache_dir=cache_dir)
    assert result.returncode == 1 and last_line(result.stderr).startswith("robusttune: error: no space left on "), result.stderr
    space, text = load_space("demo")
    experiment = tmp_path / "exp"
    experiment.mkdir()
    write_manifest(experiment, space, text, seed=0, trials=1, concurrency=1, runner={"kind": "train"})
    append_record(experiment, {"trial_id": "t1", "status": "complete", "step": 150, "evaluation": 6, "final": True,
                               "id_acc": 0.9, "id_val_acc": 0.9, "ood_mean": 0.8, "total_steps": 150})
    result = invoke("report", experiment, "--no-gallery", "--out", full / "report", cache_dir=cache_dir)
    assert result.returncode == 1 and last_line(result.stderr).startswith("robusttune: error: no space left on "), result.stderr
    result = invoke("world", "prepare", "--config", world, "--cache-dir", full / "cache", cache_dir=cache_dir)
    assert result.returncode == 1 and last_line(result.stderr).startswith("robusttune: error: no space left on "), result.stderr
    for output in (result.stderr,):
        assert "Traceback" not in output


def test_a_read_only_experiment_is_one_line_for_report_and_resume(tmp_path, cache_dir, read_only):
    from robusttune.experiment import append_record, write_manifest
    from robusttune.space import load_space

    space, text = load_space("demo")
    experiment = tmp_path / "ro" / "exp"
    experiment.mkdir(parents=True)
    write_manifest(experiment, space, text, seed=0, trials=1, concurrency=1, runner={"kind": "train"})
    append_record(experiment, {"trial_id": "t1", "status": "complete", "step": 150, "evaluation": 6, "final": True,
                               "id_acc": 0.9, "id_val_acc": 0.9, "ood_mean": 0.8, "total_steps": 150})
    read_only(tmp_path / "ro", keep=True)
    for args in (["report", experiment, "--no-gallery"], ["resume", experiment]):
        result = invoke(*args, cache_dir=cache_dir)
        assert result.returncode in (1, 2) and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert str(experiment) in result.stderr and ("read-only" in result.stderr or "not writable" in result.stderr)


def test_a_records_file_that_is_a_folder_is_refused_before_anything_starts(tmp_path, cache_dir):
    from robusttune.experiment import write_manifest
    from robusttune.space import load_space

    space, text = load_space("demo")
    experiment = tmp_path / "exp"
    experiment.mkdir()
    write_manifest(experiment, space, text, seed=0, trials=1, concurrency=1, runner={"kind": "train"})
    (experiment / "records.jsonl").mkdir()
    for command in ("status", "resume", "report"):
        result = invoke(command, experiment, cache_dir=cache_dir)
        assert result.returncode == 2 and last_line(result.stderr).endswith("records.jsonl: not a file; the experiment is damaged"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in experiment.iterdir()) == ["manifest.json", "records.jsonl", "space.yaml"]
