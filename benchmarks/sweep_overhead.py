"""Driver overhead per trial of our sweep path: our trainable wrapper with training swapped out, OptunaSearch
(TPE, multi-objective, journal storage), the records callback, on a local Ray instance.

    python benchmarks/sweep_overhead.py [--trials 500] [--json]

Prints the wall time per trial (the whole sweep divided by the trial count) as the last line with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {
    "name": "overhead",
    "sampler": {"name": "tpe", "seed": 0},
    "parameters": {"region": {"type": "categorical", "choices": ["object", "context", "random", "none"]},
                   "w_distill": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
                   "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
    "fixed": {"steps": 1},
    "resources": {"cpu": 1},
}


def no_op_trial(config: dict, *, objective_value: float = 0.5) -> None:
    """Our sweep path with training swapped out: one report with the searcher's metrics."""
    from ray import tune

    tune.report({"id_val_acc": objective_value, "ood_mean": objective_value, "objective": objective_value, "step": 1,
                 "epoch": 1.0, "evaluation": 1, "total_steps": 1, "trial_status": "complete"})


class NoOpRunner:
    """A trial runner (robusttune.search.sweep.TrialRunner) whose trials report at once; no baselines."""

    def trainable(self, experiment, space, space_text):
        import functools

        return functools.partial(no_op_trial)

    def stopper(self, experiment):
        return None

    def after_trials(self, experiment, space, space_text):
        return None

    def describe(self):
        return {"kind": "no-op"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from robusttune.config import parse
    from robusttune.experiment import latest_by_trial, new_experiment_dir
    from robusttune.search.sweep import SweepOptions, run_sweep
    from robusttune.space import SearchSpace

    text = yaml.safe_dump(SPACE)
    space = parse(SearchSpace, SPACE, "overhead space")
    with tempfile.TemporaryDirectory() as root:
        experiment = new_experiment_dir(Path(root), "overhead", overwrite=False)
        options = SweepOptions(trials=args.trials, concurrency=args.concurrency, seed=0, verbose=0)
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)  # startup not counted
        started = time.perf_counter()
        run_sweep(experiment, space, text, options, NoOpRunner())
        seconds = time.perf_counter() - started
        recorded = len(latest_by_trial(experiment))
    result = {"trials": args.trials, "recorded_trials": recorded, "seconds": round(seconds, 2),
              "ms_per_trial": round(1000 * seconds / args.trials, 1), "concurrency": args.concurrency}
    print(f"{args.trials} no-op trials in {seconds:.1f} s: {result['ms_per_trial']} ms per trial ({recorded} recorded)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
