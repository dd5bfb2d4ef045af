"""Data-parallel trials: N processes (gloo on the CPU here, NCCL on GPUs) train exactly the run one process trains with
N times the micro-batches, through the loop directly and through Ray Train inside Ray Tune."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import invoke, train_config, train_run
from helpers import records, tiny_space, write_space

CONFIG = {"steps": 20, "batch_size": 16, "eval_every": 10, "eval_batch_size": 64, "lr": 1e-3, "seed": 3,
          "method": {"name": "masked_distill", "region": "object", "refill": "single", "mask_ratio": 0.3, "w_distill": 3.0}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, config: dict, world_config: dict, cache_dir: str,
          synchronise: bool) -> None:
    import torch.distributed as dist

    from robusttune.config import TrainConfig, WorldConfig
    from robusttune.models.classifier import frozen_copy
    from robusttune.training import distributed
    from robusttune.training.loop import train
    from robusttune.training.world import prepare_world

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    if not synchronise:  # the fault a DDP wrapper that never fires would leave: every rank steps on its own gradient
        distributed.Shard.sum_gradients = lambda self, params: None
    try:
        prepared = prepare_world(WorldConfig.model_validate(world_config), Path(cache_dir))
        student = prepared.classifier()
        result = train(TrainConfig.model_validate(config), student, frozen_copy(student), prepared.task(),
                       shard=distributed.Shard.current())
        torch.save({"state": student.state_dict(), "history": result.history, "status": result.status},
                   f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


def data_parallel(tmp_path, tiny_world_config, cache_dir, config, *, world=2, synchronise=True):
    import torch.multiprocessing as mp

    out = str(tmp_path / "dp")
    mp.start_processes(_rank, args=(world, _free_port(), out, config, tiny_world_config.to_dict(), str(cache_dir),
                                    synchronise), nprocs=world, start_method="spawn")
    return [torch.load(f"{out}.rank{r}", weights_only=True) for r in range(world)]


def alone(tiny_prepared, config):
    from robusttune.config import TrainConfig
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.loop import train

    student, threads = tiny_prepared.classifier(), torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same kernels sum in the same order
    try:
        result = train(TrainConfig.model_validate(config), student, frozen_copy(student), tiny_prepared.task())
    finally:
        torch.set_num_threads(threads)
    return {"state": student.state_dict(), "history": result.history, "status": result.status}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))


@pytest.mark.slow
def test_two_workers_equal_one_worker_at_the_same_global_batch(tmp_path, tiny_world_config, tiny_prepared, cache_dir):
    """2 gloo processes x accum 1 == 1 process x accum 2 (the same micro-batches, masks and donors): every evaluation,
    every loss part and every final weight, to 1e-5 (bit for bit here, at equal thread counts); both ranks end with
    the same weights. Without the gradient
    all-reduce the weights differ (the test would catch a DDP wrapper whose reducer never fires)."""
    single = alone(tiny_prepared, {**CONFIG, "accum_steps": 2})
    ranks = data_parallel(tmp_path, tiny_world_config, cache_dir, {**CONFIG, "workers": 2})
    assert single["status"] == ranks[0]["status"] == "complete"
    for key, value in single["state"].items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key  # the ranks agree exactly
        assert close(ranks[0]["state"][key], value), key
    for a, b, last in zip(single["history"], ranks[0]["history"], ranks[1]["history"]):
        assert a["step"] == b["step"] and a["metrics"] == pytest.approx(b["metrics"], abs=1e-9)  # sharded evaluation
        for part in ("loss_task", "loss_distill", "mask_fraction"):  # the step's last micro-batch is rank 1's
            assert a[part] == pytest.approx(last[part], rel=1e-5), part

    unsynchronised = data_parallel(tmp_path, tiny_world_config, cache_dir, {**CONFIG, "workers": 2}, synchronise=False)
    differs = [k for k, v in single["state"].items() if v.is_floating_point() and not close(unsynchronised[0]["state"][k], v)]
    assert differs, "unsynchronised gradients gave the same weights: the test could not catch a missing all-reduce"


@pytest.mark.slow
def test_lp_ft_on_two_workers_keeps_the_tower_frozen_through_the_probe(tmp_path, tiny_world_config, tiny_prepared,
                                                                       cache_dir):
    """The gradient sum covers the weights a step trains: had it all-reduced zeros into the frozen tower during LP-FT's
    probe, AdamW (weight decay, moments) would have moved it. 2 workers equal 1, and the tower after the probe is the
    zero-shot one."""
    config = {**CONFIG, "steps": 8, "eval_every": 4, "weight_decay": 0.1,
              "method": {"name": "lp_ft", "lp_fraction": 0.5}}
    single = alone(tiny_prepared, {**config, "accum_steps": 2})
    ranks = data_parallel(tmp_path, tiny_world_config, cache_dir, {**config, "workers": 2})
    for key, value in single["state"].items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]) and close(ranks[0]["state"][key], value), key
    zero_shot = tiny_prepared.classifier().state_dict()
    assert any(not torch.equal(single["state"][k], zero_shot[k]) for k in zero_shot if k.startswith("visual."))
    # a run that ends with its probe (4 steps of 4): the tower is the zero-shot one, on every rank
    probe = data_parallel(tmp_path, tiny_world_config, cache_dir,
                          {**config, "steps": 4, "workers": 2, "method": {"name": "lp_ft", "lp_fraction": 0.99}})
    assert all(torch.equal(r["state"][k], zero_shot[k]) for r in probe for k in zero_shot if k.startswith("visual."))
    assert not torch.equal(probe[0]["state"]["head.weight"], zero_shot["head.weight"])


def test_a_step_splits_into_the_same_micro_batches_on_any_number_of_workers():
    from robusttune.training.distributed import Shard
    from robusttune.training.loop import StepBatches

    config = train_config(steps=3, batch_size=12, accum_steps=1, workers=3)
    shards = [list(StepBatches(config, 40, 0, 3, shard=Shard(r, 3))) for r in range(3)]
    single = list(StepBatches(train_config(steps=3, batch_size=12, accum_steps=3), 40, 0, 3))
    assert [b for step in range(3) for r in range(3) for b in shards[r][step:step + 1]] == single
    assert [StepBatches(config, 40, 0, 3, shard=Shard(r, 3)).slots for r in range(3)] == [range(0, 1), range(1, 2), range(2, 3)]


def test_workers_that_do_not_divide_the_batch_are_refused():
    from robusttune.config import TrainConfig, parse
    from robusttune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"must be a multiple of accum_steps x workers \(2 x 3\)"):
        parse(TrainConfig, {"batch_size": 16, "accum_steps": 2, "workers": 3}, "t")


# ------------------------------------------------------------------------- through Ray Train inside Ray Tune


def dp_space(tiny_world_config, **overrides):
    """Trials on 2 Ray Train workers of 0.9 CPU each (the 2-core machine also holds the trial's waiting process)."""
    return tiny_space(tiny_world_config, **{
        "fixed": {"steps": 24, "batch_size": 16, "eval_every": 8, "eval_batch_size": 128, "lr": 1e-3},
        "budget": {"trials": 2, "concurrency": 1}, "resources": {"cpu": 0.9, "workers": 2},
        "baselines": {"wise_alphas": [0.0, 1.0]}, **overrides})


def evaluations(experiment: Path) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = {}
    for row in records(experiment):
        if row.get("evaluation") and not row.get("final") and row.get("status") != "failed":
            steps.setdefault(row["trial_id"], []).append(row["step"])
    return steps


@pytest.mark.slow
def test_a_two_worker_sweep_survives_kill_9_of_its_driver(tmp_path, tiny_world_config, tiny_prepared, cache_dir,
                                                          kill_9_when, ray_local):
    experiment = tmp_path / "runs" / "dp"
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}

    def mid_trial() -> bool:
        return (experiment / "records.jsonl").exists() and any(r.get("step") == 8 for r in records(experiment))

    space = dp_space(tiny_world_config, budget={"trials": 1, "concurrency": 1})  # the rest of a budget: 1-worker drills
    kill_9_when(["sweep", write_space(tmp_path / "dp.yaml", space), "--storage",
                 tmp_path / "runs", "--name", "dp"], env, mid_trial, timeout=300,
                never="the 2-worker trial never reported its first evaluation")
    before = evaluations(experiment)
    result = invoke("resume", experiment, "--json", env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["counts"]["complete"] == 1
    after = evaluations(experiment)
    for trial_id, steps in before.items():  # resumed from its checkpoint (rank 0 wrote it, every rank read it)
        # as for one-worker trials: an evaluation the killed driver never recorded stays in the checkpoint's history
        # only (the resumed trial re-reports its latest one)
        resumed = after[trial_id][len(steps):]
        assert resumed and min(resumed) >= max(steps) and max(resumed) == 24, (steps, resumed)
    configs = [r["config"] for r in records(experiment) if r.get("final")]
    assert {c["workers"] for c in configs} == {2}


@pytest.mark.slow
def test_a_lost_worker_fails_its_trial_which_is_retried_from_its_checkpoint(tmp_path, tiny_world_config,
                                                                           tiny_prepared, cache_dir):
    experiment = tmp_path / "runs" / "lost"
    space = write_space(tmp_path / "lost.yaml", dp_space(tiny_world_config, budget={"trials": 1, "concurrency": 1}))
    err = open(tmp_path / "err.txt", "wb")
    driver = subprocess.Popen([sys.executable, "-m", "robusttune.cli", "sweep", space, "--storage", tmp_path / "runs",
                               "--name", "lost", "--max-failures", "1", "--json"],
                              env={**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}, stdout=subprocess.PIPE,
                              stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not ((experiment / "records.jsonl").exists()
                                              and any(r.get("step") == 8 for r in records(experiment))):
            time.sleep(0.3)
        workers = [int(line.split()[0]) for line in subprocess.run(
            ["ps", "-o", "pid=,args=", "-g", str(driver.pid)], capture_output=True, text=True).stdout.splitlines()
            if "RayTrainWorker" in line]
        assert workers, "no Ray Train worker found to kill"
        os.kill(workers[-1], signal.SIGKILL)  # one worker of the trial dies (a lost node, an OOM kill)
        out, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert driver.returncode == 0, (tmp_path / "err.txt").read_text()[-3000:]
    assert json.loads(out.decode().strip().splitlines()[-1])["counts"]["complete"] == 1
    rows = records(experiment)
    assert any(r.get("retry") for r in rows), "the trial was not retried"
    steps = evaluations(experiment)[rows[0]["trial_id"]]
    assert steps[0] == 8 and max(steps) == 24 and steps == sorted(steps)  # retried from its checkpoint, not from 0


@pytest.mark.slow
def test_train_with_two_workers_is_the_run_of_one_worker_with_twice_the_micro_batches(tmp_path, tiny_world_config,
                                                                                      tiny_prepared, cache_dir):
    import yaml

    from robusttune.training.checkpoint import load_checkpoint

    config = {**CONFIG, "steps": 8, "eval_every": 4, "world": tiny_world_config.to_dict()}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**config, "accum_steps": 2}))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    for name, extra in (("one", ["--threads", "1"]), ("two", ["--workers", "2", "--device", "cpu"])):
        done = subprocess.run([sys.executable, "-m", "robusttune.cli", "train", "--config", tmp_path / f"{name}.yaml",
                               "--out", tmp_path / name, "--json", *extra], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "complete"
    one, two = load_checkpoint(tmp_path / "one" / "final.pt"), load_checkpoint(tmp_path / "two" / "final.pt")
    assert json.loads(two["config"])["workers"] == 2
    for key, value in one["model"].items():
        assert close(two["model"][key], value), key
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]  # written once, by rank 0



@pytest.mark.slow
def test_mo_asha_stops_one_and_two_worker_trials_alike_and_frees_their_workers(tmp_path, tiny_world_config,
                                                                                 tiny_prepared, cache_dir):
    # One trial at a time on 2 CPUs: a stopped 2-worker trial whose workers kept their CPUs would leave every later
    # trial waiting forever (the driver's timeout below fails the test then).
    experiment = tmp_path / "runs" / "mixed"
    # seed 1's first four trials: 1 worker (complete), 1 (stopped), 2 (stopped), 2 (stopped) after a stopped 2-worker one
    space = dp_space(tiny_world_config, budget={"trials": 4, "concurrency": 1}, resources={"cpu": 0.9},
                     sampler={"name": "random", "seed": 1},
                     parameters={"w_distill": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
                                 "workers": {"type": "categorical", "choices": [1, 2]}},
                     scheduler={"name": "mo_asha", "grace_period": 1, "reduction_factor": 2})
    done = subprocess.run([sys.executable, "-m", "robusttune.cli", "sweep", write_space(tmp_path / "mixed.yaml", space),
                           "--storage", tmp_path / "runs", "--name", "mixed", "--heartbeat", "0.5"],
                          env={**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the console (workers' logs shown): a stopped trial is not a crash, and Ray Train's chatter stays out
    for noise in ("Traceback", "Failed to query", "Reporting training result", "FailurePolicy"):
        at = done.stderr.find(noise)
        assert at < 0, done.stderr[max(0, at - 1500):at + 1500]
    finals = {r["trial_id"]: r for r in records(experiment) if r.get("final")}
    assert len(finals) == 4
    ends = {(r["config"]["workers"], r["status"]) for r in finals.values()}
    # both kinds of trial ran, and the scheduler stopped a 2-worker trial early, at a rung, as it stops others
    assert {w for w, _ in ends} == {1, 2} and (2, "stopped-early") in ends, ends
    for trial_id, steps in evaluations(experiment).items():
        stopped = finals[trial_id]["status"] == "stopped-early"
        assert steps == sorted(set(steps)) and (max(steps) < 24 if stopped else max(steps) == 24), (trial_id, steps)
    # rank 0's heartbeats reached the driver (at most every 0.5 s: the 2-worker trials' steps take longer)
    beats = json.loads((experiment / "heartbeats.json").read_text())
    two = [t for t, r in finals.items() if r["config"]["workers"] == 2]
    assert any(t in beats for t in two), beats
    assert not list((experiment / "train").glob("*.placement_group"))  # every stopped trial's group removed


def test_ray_still_hands_reports_to_the_tune_session_through_its_queue():
    """The one Ray internal the data-parallel heartbeats use (``data_parallel.heartbeat_queue``): a Ray upgrade that
    renames it fails here, by name."""
    from ray.train._internal.session import _TrainSession

    assert callable(getattr(_TrainSession, "_get_or_create_inter_actor_queue", None)), \
        "ray.train._internal.session._TrainSession._get_or_create_inter_actor_queue is gone: heartbeat_queue needs it"


# ------------------------------------------------------------------------- after the sweep, in one process


def test_the_workers_rule_is_one_and_a_config_trains_alike_in_one_process(tiny_world_config):
    from robusttune.config import parse
    from robusttune.search.baselines import vanilla_config
    from robusttune.search.data_parallel import trial_workers, uses_workers
    from robusttune.space import SearchSpace

    config = train_config(batch_size=16, accum_steps=2, workers=2)
    alone_ = config.in_one_process()  # 2 processes x accum 2 = 1 process x accum 4: the same micro-batches
    assert (alone_.workers, alone_.accum_steps, alone_.batch_size) == (1, 4, 16)
    assert alone_.to_dict() == {**config.to_dict(), "workers": 1, "accum_steps": 4}
    assert train_config(batch_size=16).in_one_process() == train_config(batch_size=16)
    given = parse(SearchSpace, dp_space(tiny_world_config), "s")  # resources: {workers: 2}
    searched = parse(SearchSpace, dp_space(tiny_world_config, resources={"cpu": 0.9}, parameters={
        "workers": {"type": "categorical", "choices": [1, 2]}}), "s")
    fixed = parse(SearchSpace, dp_space(tiny_world_config, resources={"cpu": 0.9},
                                        fixed={"steps": 24, "batch_size": 16, "workers": 2}), "s")
    for space, sampled, workers in ((given, {}, 2), (searched, {"workers": 1, "seed": 3}, 1), (searched, {"workers": 2}, 2),
                                    (fixed, {}, 2)):
        assert space.workers(sampled) == trial_workers(space, sampled) == workers
        assert space.trial_config({k: v for k, v in sampled.items() if k != "seed"}, seed=0).workers == workers
        assert space.max_workers() == 2 and uses_workers(space)
    for space, accum in ((given, 2), (fixed, 2), (searched, 1)):  # searched: its one-process trials' micro-batch
        vanilla = vanilla_config(space)  # the baselines' run: one process, the trials' global batch and micro-batch
        assert (vanilla.workers, vanilla.accum_steps, vanilla.batch_size) == (1, accum, 16)
    assert parse(SearchSpace, tiny_space(tiny_world_config), "s").max_workers() == 1


def test_a_data_parallel_trials_confirmation_trains_its_run_in_one_process(tmp_path, tiny_world_config, tiny_prepared,
                                                                            cache_dir):
    """Issue 34: a confirmation seed of a 2-worker trial copied ``workers: 2`` into one process and failed ('this
    process is one of 1'); it trains the same run at accum_steps 2 (so a merge's members at other seeds do too)."""
    import yaml

    from robusttune.config import parse
    from robusttune.experiment import confirm_weights, read_records
    from robusttune.search.confirm import ConfirmRun, confirm_one
    from robusttune.space import SearchSpace
    from robusttune.training.checkpoint import load_checkpoint

    space = dp_space(tiny_world_config, fixed={"steps": 4, "batch_size": 16, "eval_every": 4, "eval_batch_size": 128,
                                               "lr": 1e-3}, baselines={"wise_alphas": [0.0]})
    config = parse(SearchSpace, space, "s").trial_config({"w_distill": 3.0, "region": "object"}, seed=5).to_dict()
    assert config["workers"] == 2
    run = ConfirmRun("t1", {**config, "seed": 6}, 1, curve=False)  # a merge's member: its own point, no curve
    assert confirm_one(str(tmp_path), yaml.safe_dump(space), str(cache_dir), run.to_dict(), 1) == 1
    (row,) = [r for r in read_records(tmp_path) if r.get("kind") == "confirm"]
    assert row.get("status") != "failed" and row["config"] == run.config and row["config_key"] == run.key, row
    saved = load_checkpoint(confirm_weights(tmp_path, run.key, 1))
    single = alone(tiny_prepared, {**run.config, "workers": 1, "accum_steps": 2})
    assert single["history"][-1]["metrics"]["id_acc"] == row["id_acc"]
    for key, value in single["state"].items():
        assert close(saved["model"][key], value), key


def test_the_waiting_process_of_a_data_parallel_trial_builds_no_task(tmp_path, tiny_world_config, tiny_prepared,
                                                                     monkeypatch):
    """The Tune trial's own process (0.01 CPU: one thread, no GPU) re-reports the resumed checkpoint's evaluation from
    the checkpoint alone: building the task there (the zero-shot head) took hours on a new ImageNet experiment."""
    import yaml

    from robusttune.config import parse
    from robusttune.experiment import trial_files
    from robusttune.search.trainable import train_trial
    from robusttune.space import SearchSpace
    from robusttune.training import run as run_module
    from robusttune.training.checkpoint import save_checkpoint

    space = tiny_space(tiny_world_config)  # steps 4, an evaluation every 2
    config = parse(SearchSpace, space, "s").trial_config({"w_distill": 3.0, "region": "object"}, seed=0)
    files = trial_files(tmp_path, "t1")
    files.folder.mkdir(parents=True)
    job = {"space_yaml": yaml.safe_dump(space), "experiment": str(tmp_path), "train_config": config.to_dict(),
           "trial_id": "t1", "cache_dir": "/nonexistent", "node_id": "n", "heartbeat_seconds": 30.0}

    def nowhere(*args, **kwargs):
        raise AssertionError("the waiting process built the task")

    monkeypatch.setattr(run_module, "build_task", nowhere)
    reports: list[dict] = []
    assert train_trial(job, report_to=reports.append, train=False) is True and reports == []  # nothing to resume yet
    seen = []

    def save(state):  # each checkpoint the run writes, as a restarted waiting process would find it
        save_checkpoint(files.latest, state)
        reports.clear()
        left = train_trial(job, report_to=reports.append, train=False)
        (row,) = reports
        seen.append((left, row["step"], row["total_steps"], row["trial_status"], row["evaluation"]))

    train_run(tiny_prepared, config, save_checkpoint=save)
    assert seen == [(True, 2, 4, "running", 1), (False, 4, 4, "complete", 2)]


@pytest.mark.slow
def test_a_two_worker_sweep_confirms_its_front_and_its_merge_at_every_seed(tmp_path, tiny_world_config, tiny_prepared,
                                                                             cache_dir, ray_local):
    """Issue 34's done-when: a 2-worker gloo sweep with ``confirm: {seeds: 2, top: 1}`` and a merge records every
    confirmation row (the trial, its merge and vanilla FT at both seeds), trained in one process at the same global
    batch instead of failing with 'this process is one of 1'."""
    from collections import Counter

    from robusttune.experiment import is_confirm_row

    space = dp_space(tiny_world_config, confirm={"seeds": 2, "top": 1, "merges": ["uniform_soup"]})
    result = invoke("sweep", write_space(tmp_path / "dpc.yaml", space), "--storage", tmp_path / "runs", "--name", "dpc",
                    "--json", env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "runs" / "dpc"
    assert {r["config"]["workers"] for r in records(experiment) if r.get("final")} == {2}  # the trials: data-parallel
    rows = [r for r in records(experiment, trials_only=False) if is_confirm_row(r)]
    assert not [r for r in rows if r.get("status") == "failed"], [r.get("failure") for r in rows]
    points = Counter((r["source"], r["seed"]) for r in rows if r["alpha"] is None)
    trials = {r["trial_id"] for r in records(experiment) if r.get("final")}
    sources = {source for source, _ in points} - {"zero-shot"}
    assert {"vanilla-ft", "uniform_soup"} <= sources and sources - {"vanilla-ft", "uniform_soup"} <= trials
    assert sources & trials  # the top trial (and the merge's members, trained again at seed 1)
    for source in sources:
        assert points[(source, 0)] == points[(source, 1)] == 1, (source, points)
