"""A trial's training speed on a busy machine: images/s of the demo's trial step (its tiny CLIP, batch 64, the
method's counterfactual step, 2 torch threads as Ray gives a 2-CPU trial) alone and beside a one-core CPU hog
(``python -c 'while True: pass'``), under the worker settings robusttune used to get from Ray and those it sets now.

    python benchmarks/busy_machine.py [--seconds S] [--threads K] [--json]

Settings measured (each in a fresh process, as Ray starts a worker):

* ``before``: what a trial got from a local Ray: nice 15 (Ray's default ``RAY_worker_niceness``) and OpenMP's
  default, spinning wait policy: a nice-0 hog takes its core almost entirely, and the trial's two OpenMP threads
  spin at every barrier waiting for the one that shares a core with the hog;
* ``after``: what ``robusttune.search.sweep`` now gives its local Ray's workers: nice 0 (``RAY_worker_niceness=0``,
  not below the driver) and ``OMP_WAIT_POLICY=PASSIVE`` (a waiting thread sleeps and leaves the core to others).

Each measurement is short (``--seconds``, default 6 s after one warm-up step). Prints one line per measurement and the
ratios beside the hog / alone; ``--json``: one JSON object as the last line. On a machine where other work runs too,
the figures move with it: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {
    "before": {"nice": 15, "env": {}},
    "after": {"nice": 0, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}
HOG = [sys.executable, "-c", "while True: pass"]


def worker(seconds: float, threads: int, batch: int) -> None:
    """One trial's training steps for ``seconds``; prints images/s."""
    import torch

    from robusttune.config import TrainConfig, default_world, with_method
    from robusttune.data.mini.captions import CLASSNAMES, PROMPT_TEMPLATES
    from robusttune.models.classifier import frozen_copy
    from robusttune.models.clip import build_classifier
    from robusttune.models.tiny import CompactTokenizer, create_tiny_clip
    from robusttune.training.device import Placement
    from robusttune.training.loop import StepComputer, StepHealth, make_optimizer

    torch.set_num_threads(threads)
    world = default_world()
    texts = [t.format(c) for c in CLASSNAMES for t in PROMPT_TEMPLATES]
    tokenizer = CompactTokenizer.from_texts(texts, world.model.context_length)
    clip = create_tiny_clip(world.model, image_size=world.image_size, vocab_size=len(tokenizer), seed=0)
    student = build_classifier(clip, tokenizer, CLASSNAMES, PROMPT_TEMPLATES)
    config = TrainConfig.model_validate(with_method(dict(region="object", refill="single", mask_threshold=0.3,
                                                         w_distill=1.0)))
    placement = Placement.of("cpu", "fp32")
    computer = StepComputer(config, student, frozen_copy(student), placement)
    optimizer, health = make_optimizer(list(student.parameters()), config, placement), StepHealth(placement.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, world.image_size, world.image_size, generator=generator)
    labels = torch.randint(0, len(CLASSNAMES), (batch,), generator=generator)

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, parts = computer.loss(images, labels, i)
        health.observe(i, loss, parts)
        loss.backward()
        optimizer.step()

    step(0)  # warm-up
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step(steps + 1)
        steps += 1
        # the running rate after every step: a measurement cut short by its time limit still says what it saw
        print(json.dumps({"images_per_s": steps * batch / (time.perf_counter() - started), "steps": steps}), flush=True)


def measure(setting: str, *, hog: bool, seconds: float, threads: int, batch: int, limit: float) -> float:
    chosen = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(chosen["env"])
    hogger = subprocess.Popen(HOG) if hog else None
    worker_process = subprocess.Popen([sys.executable, __file__, "--worker", "--seconds", str(seconds), "--threads",
                                       str(threads), "--batch", str(batch)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(chosen["nice"]))
    try:
        out, err = worker_process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:  # starved: what it did within the limit (0 if not even its warm-up step)
        worker_process.kill()
        out, err = worker_process.communicate()
    finally:
        if hogger is not None:
            hogger.kill()
            hogger.wait()
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if not lines and worker_process.returncode not in (0, -9):
        raise SystemExit(f"the measurement failed: {err.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])["images_per_s"] if lines else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--limit", type=float, default=120.0, help="seconds a measurement may take in all (a starved "
                        "worker is cut off and its rate so far is its figure)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.seconds, args.threads, args.batch)
        return 0
    results: dict[str, dict[str, float]] = {}
    for setting in SETTINGS:
        results[setting] = {}
        for hog in (False, True):
            rate = measure(setting, hog=hog, seconds=args.seconds, threads=args.threads, batch=args.batch,
                           limit=args.limit)
            results[setting]["beside_hog" if hog else "alone"] = round(rate, 1)
            print(f"{setting:6s} {'beside a one-core hog' if hog else 'alone':22s} {rate:8.1f} images/s", flush=True)
        results[setting]["ratio"] = round(results[setting]["beside_hog"] / max(results[setting]["alone"], 1e-9), 3)
        print(f"{setting:6s} beside the hog / alone: {results[setting]['ratio']:.0%}", flush=True)
    load = os.getloadavg()
    summary = {"cpus": os.cpu_count(), "loadavg_1m_at_end": round(load[0], 2), "threads": args.threads,
               "batch": args.batch, "seconds": args.seconds, **results}
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
