"""Does a constraint move the search into the feasible region? Replays on the continuous benchmark.

    python benchmarks/constraints_replay.py [--table mini_continuous] [--sampler gp] [--seeds 3] [--trials 60]
        [--constraint "id_val_acc <= 0.93"] [--budget 0.25] [--out DIR] [--json]

Each seed runs two searches of the table's space (its objectives, ``id_val_acc`` and ``ood_mean``, both maximised)
through the real sweep path (Ray Tune + Optuna + records; the trainable asks the benchmark's surrogate, see
``robusttune.bench.replay``), one trial at a time, ``--trials`` full trials' worth of evaluations each: one without
the constraint, one with it in the objective (``objective.constraints``: Optuna is told each trial's constraint
value). Printed per seed and as a mean over seeds: the share of the trials complete by ``--budget`` of the search's
evaluations that satisfy the constraint (for the unconstrained search, judged by the same rule from its records).
The default constraint excludes the high-ID corner the unconstrained search heads for (about half of the table's
final points satisfy it). With --json the last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def replay(table_path: Path, sampler: str, seed: int, trials: int, constraint: str | None, storage: Path) -> Path:
    import yaml

    from robusttune.bench.replay import Arm, ReplayRunner, replay_space
    from robusttune.bench.table import Table, read_table
    from robusttune.experiment import new_experiment_dir
    from robusttune.search.sweep import SweepOptions, run_sweep

    table = read_table(table_path)
    if constraint:
        data = yaml.safe_load(table.meta["space_yaml"])
        data.setdefault("objective", {})["constraints"] = [constraint]
        table = Table(table.frame, {**table.meta, "space_yaml": yaml.safe_dump(data, sort_keys=False)})
    budget = trials * table.evaluations
    quiet = {"warn_independent_sampling": False} if sampler in ("tpe", "gp") else {}  # conditional parameters
    space, text = replay_space(table, Arm.of(sampler, "none", options=quiet), seed, trials=budget)
    name = f"{sampler}-{'constrained' if constraint else 'free'}-seed{seed}"
    experiment = new_experiment_dir(storage, name, overwrite=True)
    runner = ReplayRunner(table=str(Path(table_path).resolve()), max_evaluations=budget)
    run_sweep(experiment, space, text, SweepOptions(trials=space.budget.trials, concurrency=1, seed=seed, verbose=0), runner)
    return experiment


def feasible_share(experiment: Path, constraint: str, budget: int) -> tuple[float, int]:
    """The share of trials complete within ``budget`` evaluations that satisfy ``constraint``, and their number."""
    from robusttune.constraints import parse_constraint
    from robusttune.experiment import is_evaluation, read_records

    bound = parse_constraint(constraint)
    seen: set[tuple[str, int]] = set()
    verdicts = []
    for row in read_records(experiment):
        if is_evaluation(row):
            seen.add((row["trial_id"], int(row["evaluation"])))
        if row.get("final") and row.get("status") == "complete" and len(seen) <= budget and bound.metric in row:
            verdicts.append(bound.value(row) <= 0)
    return (sum(verdicts) / len(verdicts) if verdicts else float("nan")), len(verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", default="mini_continuous")
    parser.add_argument("--sampler", default="gp", choices=["random", "tpe", "nsga2", "gp"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--constraint", default="id_val_acc <= 0.93")
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from robusttune.bench.replay import resolve_table
    from robusttune.bench.table import read_table
    from robusttune.constraints import parse_constraint

    try:
        if parse_constraint(args.constraint).reference is not None:
            raise ValueError(f"constraint '{args.constraint}': a benchmark table holds no zero-shot or vanilla FT run; "
                             "bound it by a number")
    except ValueError as error:
        print(f"constraints_replay: {error}", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.trials < 2 or not 0 < args.budget <= 1:
        print("constraints_replay: --seeds >= 1, --trials >= 2 and 0 < --budget <= 1", file=sys.stderr)
        return 2
    table_path = resolve_table(args.table)
    evaluations = read_table(table_path).evaluations
    budget = int(args.budget * args.trials * evaluations)
    storage = args.out or Path(tempfile.mkdtemp(prefix="constraints-replay-"))
    rows = []
    for seed in range(args.seeds):
        row = {"seed": seed}
        for label, constraint in (("free", None), ("constrained", args.constraint)):
            experiment = replay(table_path, args.sampler, seed, args.trials, constraint, storage)
            row[label], row[f"{label}_trials"] = feasible_share(experiment, args.constraint, budget)
        rows.append(row)
        print(f"seed {seed}: feasible share by {args.budget:.0%} of the budget: without the constraint "
              f"{row['free']:.2f} ({row['free_trials']} trials), with it {row['constrained']:.2f} "
              f"({row['constrained_trials']} trials)", flush=True)
    means = {label: statistics.fmean(r[label] for r in rows) for label in ("free", "constrained")}
    print(f"mean over {args.seeds} seed(s): without {means['free']:.2f}, with {means['constrained']:.2f} "
          f"({args.sampler}, '{args.constraint}', {args.trials} trials' worth of evaluations, table {args.table})")
    if args.json:
        print(json.dumps({"sampler": args.sampler, "constraint": args.constraint, "trials": args.trials,
                          "budget": args.budget, "evaluations_at_budget": budget, "seeds": rows, "mean": means,
                          "out": str(storage)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
