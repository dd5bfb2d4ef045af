"""Which searcher and scheduler find the ID/OOD front with the least compute? Replays on the tabulated benchmark.

    python benchmarks/search_efficiency.py [--quick] [--table mini_full] [--seeds 5] [--json]

Every arm searches the same table through the real sweep path (Ray Tune + Optuna + scheduler + records; the
trainable looks curves up, see robusttune.bench.replay), one trial at a time, for ``--horizon`` of the full grid's
compute (budget unit: one evaluation interval of one trial). For each arm and seed we take the hypervolume over
(ID val, OOD mean) of the trials *complete* by a budget (stopped-early trials never count, as in the reports),
with the table's worst final point less one accuracy point as the reference. Printed per arm: hypervolume at ``--budget`` (mean, std,
min, max over seeds), its ratio to random search's mean, and the budget each seed needed to reach 95% of the
whole table's hypervolume (median and worst seed; "-" if a seed never got there within the horizon).

The default arm is the sampler and scheduler of the built-in ``demo`` space. With --json the last line is a JSON
object with the default arm's ``hv_ratio_vs_random`` and ``budget_fraction_to_95pct`` (median over seeds), plus
every arm's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHECKPOINTS = (0.1, 0.25, 0.4, 0.5, 1.0)  # budgets (fractions of the grid) at which the table shows HV / table HV
ARMS = [("random", "none"), ("random", "asha"), ("tpe", "none"), ("tpe", "mo_asha"), ("nsga2", "mo_asha"),
        ("paper_grid", "none")]


def demo_scheduler():
    from robusttune.space import load_space

    space, _ = load_space("demo")
    return space.sampler.name.value, space.scheduler


def summarise(name, runs, budget, table_hv, full_grid, random_mean):
    from robusttune.bench.replay import budget_to_reach, hypervolume_at

    hvs = [hypervolume_at(run.curve, budget) for run in runs]
    reached = [budget_to_reach(run.curve, 0.95 * table_hv) for run in runs]
    fractions = [None if r is None else r / full_grid for r in reached]
    got_there = sorted(f for f in fractions if f is not None)
    median = statistics.median([f if f is not None else float("inf") for f in fractions])
    return {"arm": name, "seeds": len(runs), "hv_mean": statistics.fmean(hvs), "hv_std": statistics.pstdev(hvs),
            "hv_min": min(hvs), "hv_max": max(hvs), "hv_by_seed": hvs,
            "hv_ratio_vs_random": statistics.fmean(hvs) / random_mean if random_mean else None,
            "budget_fraction_to_95pct": None if median == float("inf") else median,
            "budget_fraction_to_95pct_worst": got_there[-1] if len(got_there) == len(runs) else None,
            "seeds_reaching_95pct": len(got_there), "budget_fraction_to_95pct_by_seed": fractions,
            "hv_fraction_of_table_at": {str(b): statistics.fmean(hypervolume_at(run.curve, round(b * full_grid)) for run in runs)
                                        / table_hv for b in CHECKPOINTS},
            "trials_mean": statistics.fmean(run.trials for run in runs),
            "replay_seconds": sum(run.seconds for run in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="mini_full", help="table file or shipped table name (default: mini_full)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (default 5)")
    parser.add_argument("--budget", type=float, default=0.25, help="compare hypervolumes at this fraction of the full grid's compute")
    parser.add_argument("--horizon", type=float, default=1.0, help="each search runs to this fraction (default 1.0)")
    parser.add_argument("--grace-period", type=int, help="schedulers' grace period in evaluations (default: demo.yaml's)")
    parser.add_argument("--reduction-factor", type=float, help="schedulers' reduction factor (default: demo.yaml's)")
    parser.add_argument("--quick", action="store_true", help="3 seeds, horizon 0.5: a few minutes on 2 cores")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.horizon = min(args.seeds, 3), min(args.horizon, 0.5)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray

    from robusttune.bench.replay import Arm, resolve_table, run_replay, table_reference
    from robusttune.bench.table import read_table

    path = resolve_table(args.table)
    table = read_table(path)
    full_grid = len(table.curves) * table.evaluations
    budget, horizon = round(args.budget * full_grid), round(max(args.horizon, args.budget) * full_grid)
    _, table_hv = table_reference(table)
    demo_sampler, demo_scheduler_config = demo_scheduler()
    grace = args.grace_period or demo_scheduler_config.grace_period
    eta = args.reduction_factor or demo_scheduler_config.reduction_factor
    default = Arm.of(demo_sampler, demo_scheduler_config.name, grace_period=grace, reduction_factor=eta)
    arms_to_run = ARMS + ([] if (default.sampler, default.scheduler) in ARMS else [(default.sampler, default.scheduler)])
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)  # startup not counted
    runs: dict[str, list] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        for sampler, scheduler in arms_to_run:
            arm = Arm.of(sampler, scheduler, grace_period=grace, reduction_factor=eta)
            seeds = range(args.seeds)
            runs[arm.name] = [run_replay(path, arm, seed, horizon, Path(storage)) for seed in seeds]
            print(f"  {arm.name}: {args.seeds} searches in {sum(r.seconds for r in runs[arm.name]):.0f} s", file=sys.stderr,
                  flush=True)
    seconds = time.perf_counter() - started
    random_mean = summarise("random", runs["random"], budget, table_hv, full_grid, None)["hv_mean"]
    arms = [summarise(name, arm_runs, budget, table_hv, full_grid, random_mean) for name, arm_runs in runs.items()]

    print(f"table {path.name}: {len(table.curves)} grid points x {table.evaluations} evaluations = {full_grid} "
          f"(the full grid's compute); tabulated in {table.meta.get('tabulate_seconds')} s; table hypervolume {table_hv:.6f}")
    print(f"schedulers: grace period {grace}, reduction factor {eta:g} (evaluations)")
    print(f"hypervolume at {args.budget:.0%} of the grid's compute ({budget} evaluations), {args.seeds} seeds; "
          f"budget to reach 95% of the table's hypervolume (searches run to {horizon / full_grid:.0%})")
    header = f"{'arm':<16}{'HV mean':>10}{'std':>9}{'min':>9}{'max':>9}{'x random':>10}{'to 95% (median)':>17}{'worst':>8}{'trials':>8}"
    print(header)
    for row in arms:
        marker = " (default)" if row["arm"] == default.name else ""
        to95 = "-" if row["budget_fraction_to_95pct"] is None else f"{row['budget_fraction_to_95pct']:.0%}"
        worst = "-" if row["budget_fraction_to_95pct_worst"] is None else f"{row['budget_fraction_to_95pct_worst']:.0%}"
        print(f"{row['arm']:<16}{row['hv_mean']:>10.6f}{row['hv_std']:>9.6f}{row['hv_min']:>9.6f}{row['hv_max']:>9.6f}"
              f"{row['hv_ratio_vs_random']:>10.2f}{to95:>17}{worst:>8}{row['trials_mean']:>8.0f}{marker}")
    print("\nhypervolume / the table's, mean over seeds, at a budget of (fraction of the grid's compute):")
    print(f"{'arm':<16}" + "".join(f"{b:>8.0%}" for b in CHECKPOINTS if b * full_grid <= horizon))
    for row in arms:
        print(f"{row['arm']:<16}" + "".join(f"{row['hv_fraction_of_table_at'][str(b)]:>8.3f}" for b in CHECKPOINTS
                                            if b * full_grid <= horizon))
    print(f"{sum(len(r) for r in runs.values())} replayed searches in {seconds:.0f} s")
    chosen = next(row for row in arms if row["arm"] == default.name)
    if args.json:
        print(json.dumps({"default_arm": default.name, "hv_ratio_vs_random": chosen["hv_ratio_vs_random"],
                          "budget_fraction_to_95pct": chosen["budget_fraction_to_95pct"],
                          "grace_period": grace, "reduction_factor": eta,
                          "budget_fraction": args.budget, "horizon_fraction": horizon / full_grid, "seeds": args.seeds,
                          "table": str(path), "table_hypervolume": table_hv, "full_grid_evaluations": full_grid,
                          "tabulate_seconds": table.meta.get("tabulate_seconds"), "replay_seconds": round(seconds, 1),
                          "arms": arms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
