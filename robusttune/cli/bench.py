"""``robusttune bench tabulate``, ``bench replay`` and ``bench surrogate``: the search benchmarks (robusttune.bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from robusttune.cli.output import add_common, command_group, emit, table
from robusttune.errors import ParameterError
from robusttune.space import SCHEDULERS, SamplerName

# the space's samplers that replay on the table (the grid is the table itself), and the paper's own grid
REPLAY_SAMPLERS = [s.value for s in SamplerName if s is not SamplerName.GRID] + ["paper_grid"]


def cmd_tabulate(args: argparse.Namespace) -> int:
    from robusttune import api

    if not args.json:
        print(f"tabulating '{args.space}' -> {Path(args.storage) / (args.name or f'tabulate-{Path(args.space).stem}')}",
              flush=True)
    done = api.tabulate(args.space, out=args.out, storage=args.storage, name=args.name, concurrency=args.concurrency,
                        address=args.address, overwrite=args.overwrite, cache_dir=args.cache_dir,
                        verbose=0 if args.json else 1, points=args.points, noise_points=args.noise_points,
                        noise_seeds=args.noise_seeds)
    payload = {"table": str(done.table), "points": done.points, "full_curves": done.full_curves, "rows": done.rows,
               "evaluations_per_curve": done.evaluations_per_curve, "seconds": done.seconds,
               "experiment": str(done.experiment), "resumed": done.resumed}

    def human() -> None:
        print(f"table {done.table}: {done.full_curves} of {done.points} points with full curves "
              f"({done.evaluations_per_curve} evaluations each), {done.rows} rows, tabulated in {done.seconds:.0f} s")
        if done.full_curves < done.points:
            print(f"  {done.points - done.full_curves} point(s) have no full curve (failed or interrupted); replays treat "
                  f"them as failed trials. Rerun this command to continue an interrupted tabulation.")

    emit(payload, args.json, human)
    return 0


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ParameterError("seeds", f"takes comma-separated integers, got {text!r}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    from robusttune import api

    result = api.replay(args.table, sampler=args.sampler, scheduler=args.scheduler, budget=args.budget,
                        seeds=_seeds(args.seeds), grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                        storage=args.storage, pace=args.pace)

    def human() -> None:
        print(f"{result.arm} on {result.table.name}: budget {result.budget_evaluations} evaluations ({args.budget:.0%} of "
              f"the table's {result.full_grid_evaluations}: every point trained once); table hypervolume {result.table_hypervolume:.6f}")
        print(table(result.runs, ["seed", "trials", "evaluations", "hv", "hv_fraction", "budget_fraction_to_95pct",
                                  "seconds"]))
        print(f"experiments: {result.storage}  (robusttune report <experiment> draws any of them)")

    emit(result.to_dict(), args.json, human)
    return 0


def cmd_surrogate(args: argparse.Namespace) -> int:
    from robusttune import api

    result = api.surrogate(args.table)

    def human() -> None:
        cost = f", {result.trial_seconds / 3600:.1f} trial-hours to tabulate" if result.trial_seconds else ""
        print(f"{result.table.name}: {result.points} random points x {result.evaluations} evaluations "
              f"({result.rows} rows{cost})")
        print("held-out quality (5-fold cross-validation grouped by point):")
        print(table([{"target": target, **{k: round(v, 3) for k, v in q.items()}} for target, q in result.quality.items()],
                    ["target", "r2", "spearman", "r2_final", "spearman_final"]))
        noise = result.noise
        print(f"noise over seeds ({noise['points']} points held at several seeds), at the last evaluation: " + ", ".join(
            f"{m} sd {100 * sd[-1]:.2f} points (correlation between evaluations {noise['correlation'][m]:.2f})"
            for m, sd in noise["sd"].items()))
        print(f"hypervolume: the tabulated points {result.table_hypervolume:.6f}; the surrogate's front (the "
              f"benchmark's best) {result.front_hypervolume:.6f}")

    emit(result.to_dict(), args.json, human)
    return 0


def register(commands) -> None:
    bench_commands = command_group(commands, "bench", help="the tabular search benchmark: tabulate a grid, replay searches on it")
    tabulate = bench_commands.add_parser("tabulate", help="train every grid point of a space; store the learning curves")
    add_common(tabulate)
    tabulate.add_argument("space", metavar="SPACE", help="built-in space name (mini_full) or a YAML file with 'grid' values")
    tabulate.add_argument("--out", required=True, metavar="FILE", help="Parquet table to write")
    tabulate.add_argument("--storage", default="runs", metavar="DIR", help="where the grid's experiment goes (default: ./runs)")
    tabulate.add_argument("--name", help="experiment name (default: tabulate-<space>); an existing one is resumed")
    tabulate.add_argument("--concurrency", type=int, metavar="K", help="trials at a time (default: the space's)")
    tabulate.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: local")
    tabulate.add_argument("--overwrite", action="store_true", help="replace an existing table file")
    tabulate.add_argument("--points", type=int, metavar="N", help="N random points instead of the grid (a continuous "
                                                                 "benchmark: replays query a surrogate fitted to them)")
    tabulate.add_argument("--noise-points", type=int, default=0, metavar="K",
                          help="with --points: train the first K points again at more seeds, to measure the noise")
    tabulate.add_argument("--noise-seeds", type=int, default=0, metavar="R", help="seeds 1..R for the noise points")
    tabulate.set_defaults(handler=cmd_tabulate)

    replay = bench_commands.add_parser("replay", help="replay searches against a table through Ray Tune + Optuna + scheduler")
    replay.add_argument("table", metavar="TABLE", help="a table file, or 'mini_full' for the shipped table")
    replay.add_argument("--sampler", default="tpe", choices=REPLAY_SAMPLERS,
                        help="Optuna sampler, or the paper's 27-config grid (default: tpe)")
    replay.add_argument("--scheduler", default="mo_asha", choices=SCHEDULERS, help="early stopping (default: mo_asha)")
    replay.add_argument("--budget", type=float, default=0.4, metavar="F",
                        help="evaluations to spend, as a fraction of training every tabulated point once (default 0.4)")
    replay.add_argument("--seeds", default="0", metavar="S,S,...", help="sampler seeds, one search each (default 0)")
    replay.add_argument("--grace-period", type=int, default=1, metavar="N", help="scheduler grace period in evaluations")
    replay.add_argument("--reduction-factor", type=float, default=3.0, metavar="ETA", help="scheduler reduction factor")
    replay.add_argument("--storage", metavar="DIR", help="keep the replays' experiments here (default: a temp folder)")
    replay.add_argument("--pace", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long per replayed evaluation (to watch a replay live, or interrupt it)")
    replay.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    replay.set_defaults(handler=cmd_replay)

    fitted = bench_commands.add_parser("surrogate", help="fit a continuous benchmark's surrogate; its held-out quality "
                                                         "and the measured noise")
    fitted.add_argument("table", metavar="TABLE", help="a table of random points, or 'mini_continuous' for the shipped one")
    fitted.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    fitted.set_defaults(handler=cmd_surrogate)
