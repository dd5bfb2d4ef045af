"""No command's memory or time grows with a number in a config file when it need not: ``plan`` counts a trial's
evaluations and the scheduler's rungs arithmetically, and ``data pack`` runs no more decoding workers than CPUs."""

import contextlib
import logging
import os
import time
import tracemalloc

import pytest

from helpers import train_config
from robusttune.data import packed
import robusttune.search.plan as planning
from robusttune.search.plan import evaluation_steps, plan, scheduler_fraction
from robusttune.space import SearchSpace

HUGE = 10**12  # steps: no upper bound in TrainConfig


def tiny_space(world, steps, *, eval_every=None, reduction_factor=3):
    fixed = {"steps": steps, "batch_size": 16, "eval_batch_size": 64, "eval_subset": 50, "checkpoints": "final"}
    if eval_every is not None:
        fixed["eval_every"] = eval_every
    return SearchSpace.model_validate({
        "name": "tiny", "task": {"world": world.to_dict()}, "sampler": {"name": "random", "seed": 0},
        "parameters": {"region": {"type": "categorical", "choices": ["object", "none"]}}, "fixed": fixed,
        "budget": {"trials": 8, "concurrency": 2}, "resources": {"cpu": 1},
        "scheduler": {"name": "mo_asha", "grace_period": 1, "reduction_factor": reduction_factor}})


@contextlib.contextmanager
def address_space_limit(extra_bytes):
    """A regression must fail with MemoryError, not wake the OOM killer on a shared machine: cap this process's
    address space at what it uses now plus ``extra_bytes`` for the block (Linux; no cap elsewhere)."""
    try:
        import resource

        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def measured(function):
    """``(result, seconds, peak traced bytes)`` of ``function()``."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with address_space_limit(2 * 2**30):
            result = function()
        return result, time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_evaluation_count_is_the_length_of_the_evaluation_steps():
    for steps in (0, 1, 7, 12, 150, 151):
        for eval_every in (None, 1, 4, 25, 200):
            for batch_size in (2, 16, 64, 512):
                config = train_config(steps=steps, eval_every=eval_every, batch_size=batch_size)
                for n_train in (1, 50, 200, 1000):
                    assert planning.evaluation_count(config, n_train) == len(evaluation_steps(config, n_train))
    config = train_config(epochs=2.5, batch_size=10)
    assert planning.evaluation_count(config, 50) == len(evaluation_steps(config, 50)) == 3  # 13 steps: at 5, 10 and 13
    (count, seconds, peak) = measured(lambda: planning.evaluation_count(train_config(steps=HUGE, eval_every=1), 1000))
    assert count == HUGE and seconds < 1 and peak < 2**20


def test_scheduler_fraction_costs_nothing_however_many_rungs():
    def space(**scheduler):
        return SearchSpace.model_validate({"scheduler": {"name": "asha", **scheduler}})

    # rungs 1, 2, 4, 8 of 10 evaluations, eta 2: 1 + 1/2 * 1 + 1/4 * 2 + 1/8 * 4 + 1/16 * 2
    assert scheduler_fraction(space(grace_period=1, reduction_factor=2), 10) == pytest.approx((1 + .5 + .5 + .5 + .125) / 10)
    # max_t 4 of 10: rungs 1, 2 only; the survivors of rung 2 run to the end
    assert scheduler_fraction(space(grace_period=1, reduction_factor=2, max_t=4), 10) == pytest.approx((1 + .5 + 2) / 10)
    # the smallest eta a space accepts over 10**12 evaluations: ~290 rungs; no list of evaluations either way
    fraction, seconds, peak = measured(lambda: scheduler_fraction(space(grace_period=1, reduction_factor=1.1), HUGE))
    assert 0 < fraction < 1 and seconds < 1 and peak < 2**20


def test_plan_of_a_huge_trial_is_arithmetic(tiny_world_config, tiny_prepared, cache_dir):
    small = plan(tiny_space(tiny_world_config, 12, eval_every=4), cache_dir)  # calibrates once, then cached
    sizes = [len(s) for s in tiny_prepared.task().eval_sets]
    per_quick, per_full = sum(min(50, n) for n in sizes), sum(sizes)
    assert small.evaluations_per_trial == 3 and small.eval_images_per_trial == 2 * per_quick + per_full

    # 10**12 steps, evaluated at each epoch end (200 images // 16 = 12 steps an epoch): once 8e10 steps in a set
    huge, seconds, peak = measured(lambda: plan(tiny_space(tiny_world_config, HUGE), cache_dir))
    evaluations = HUGE // 12 + 1  # every 12 steps, and at the last step (10**12 is not a multiple of 12)
    assert huge.steps_per_trial == HUGE and huge.evaluations_per_trial == evaluations
    assert huge.eval_images_per_trial == (evaluations - 1) * per_quick + per_full
    assert not huge.calibration["measured"] and seconds < 30 and peak < 50 * 2**20, (seconds, peak)
    step_seconds = sum(share * huge.calibration["step_seconds"][name] for name, share in huge.methods.items())
    eval_seconds = huge.eval_images_per_trial * huge.calibration["eval_seconds_per_image"]
    assert huge.trial_hours * 3600 == pytest.approx(huge.calibration["startup_seconds"] + HUGE * step_seconds
                                                    + eval_seconds, rel=1e-9)

    # the same figures as a small case, scaled: eval_every 4 over 4 * 10**11 steps
    scaled = plan(tiny_space(tiny_world_config, 4 * 10**11, eval_every=4), cache_dir)
    assert scaled.evaluations_per_trial == 10**11
    assert scaled.eval_images_per_trial == (10**11 - 1) * per_quick + per_full


def test_pack_workers_are_capped_at_the_usable_cpus(monkeypatch, caplog):
    assert packed.usable_cpus() == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    monkeypatch.setattr(packed, "usable_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="robusttune.data.packed"):
        assert [packed.pack_workers(n) for n in (0, 1, 2)] == [0, 1, 2]
        assert caplog.records == []
        assert packed.pack_workers(64) == 2
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "--workers 64" in message and "2 CPU(s)" in message and "with 2 worker(s)" in message


def test_data_pack_with_far_more_workers_than_cpus_packs_with_the_cpus(tmp_path, monkeypatch, caplog):
    import json

    from helpers import v2_folder

    from helpers import invoke

    seen = []
    real = packed._write_shards
    monkeypatch.setattr(packed, "usable_cpus", lambda: 1)
    monkeypatch.setattr(packed, "_write_shards", lambda *args: seen.append(args[6]) or real(*args))  # args[6]: workers
    with caplog.at_level(logging.WARNING, logger="robusttune.data.packed"):
        result = invoke("data", "pack", str(v2_folder(tmp_path / "v2")), str(tmp_path / "pack"), "--kind", "imagenet_v2",
                        "--workers", "64", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["images"] == 9 and seen == [1]
    assert any("--workers 64 is more than the 1 CPU(s)" in r.getMessage() for r in caplog.records)
