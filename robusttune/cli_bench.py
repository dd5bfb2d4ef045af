"""``robusttune bench tabulate`` and ``robusttune bench replay``: the tabular search benchmark."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from robusttune.errors import ConfigError


def cmd_tabulate(args: argparse.Namespace) -> int:
    from robusttune.cli import _cache_dir, _emit
    from robusttune.experiment import MANIFEST, new_experiment_dir
    from robusttune.search.space import load_space
    from robusttune.search.sweep import SweepOptions, _frozen_space, resume_sweep, run_sweep
    from robusttune.search.table import grid_space, table_from_experiment, write_table

    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {args.concurrency}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: file exists (pass --overwrite to replace it)")
    space, _ = load_space(args.space)
    grid, grid_text = grid_space(space)
    experiment = Path(args.storage) / (args.name or f"tabulate-{space.name}")
    options = SweepOptions(trials=grid.budget.trials, concurrency=args.concurrency or grid.budget.concurrency,
                           seed=grid.sampler.seed, address=args.address, cache_dir=_cache_dir(args.cache_dir),
                           baselines=False, verbose=0 if args.json else 1)
    started = time.perf_counter()
    if (experiment / MANIFEST).is_file():  # an interrupted tabulation: go on where it stopped
        frozen, _ = _frozen_space(experiment)
        if frozen.to_dict() != grid.to_dict():
            raise ConfigError(f"{experiment}: holds a tabulation of another space or grid; pass another --name")
        print(f"resuming the tabulation in {experiment}", flush=True)
        resume_sweep(experiment, options)
    else:
        experiment = new_experiment_dir(Path(args.storage), experiment.name, overwrite=False)
        print(f"tabulating '{space.name}': {grid.budget.trials} grid points, {options.concurrency} at a time -> {experiment}",
              flush=True)
        run_sweep(experiment, grid, grid_text, options)
    seconds = time.perf_counter() - started
    frame, meta = table_from_experiment(experiment, grid, grid_text, seconds)
    write_table(frame, meta, out)
    full = int((frame.groupby("point")["evaluation"].max() == meta["evaluations"]).sum())
    payload = {"table": str(out), "points": meta["points"], "full_curves": full, "rows": len(frame),
               "evaluations_per_curve": meta["evaluations"], "seconds": round(seconds, 1), "experiment": str(experiment)}

    def human() -> None:
        print(f"table {out}: {full} of {meta['points']} grid points with full curves ({meta['evaluations']} evaluations "
              f"each), {len(frame)} rows, tabulated in {seconds:.0f} s")
        if full < meta["points"]:
            print(f"  {meta['points'] - full} point(s) have no full curve (failed or interrupted); replays treat them as "
                  f"failed trials. Rerun this command to continue an interrupted tabulation.")

    _emit(payload, args.json, human)
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds names no seed")
    return seeds


def cmd_replay(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from robusttune.cli import _emit, _table
    from robusttune.search.replay import Arm, budget_to_reach, hypervolume_at, resolve_table, run_replay, table_reference
    from robusttune.search.table import read_table

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # replays are many short searches: no progress tables
    seeds = _seeds(args.seeds)
    if not 0 < args.budget <= 10:
        raise ConfigError(f"--budget is a fraction of the full grid's compute in (0, 10], got {args.budget}")
    if args.pace < 0:
        raise ConfigError(f"--pace must be >= 0, got {args.pace}")
    if args.sampler == "paper_grid" and args.scheduler != "none":
        raise ConfigError("the paper's grid runs every config in full: use --scheduler none")
    path = resolve_table(args.table)
    table = read_table(path)
    full_grid = len(table.curves) * table.evaluations  # the compute of training every grid point in full
    arm = Arm.parse(args.sampler, args.scheduler, grace_period=args.grace_period, reduction_factor=args.reduction_factor)
    budget = max(1, round(args.budget * full_grid))
    _, table_hv = table_reference(table)
    storage = Path(args.storage) if args.storage else Path(tempfile.mkdtemp(prefix="robusttune-replay-"))
    rows = []
    for seed in seeds:
        run = run_replay(path, arm, seed, budget, storage, name=f"{arm.name}-seed{seed}", pace=args.pace)
        reached = budget_to_reach(run.curve, 0.95 * table_hv)
        hv = hypervolume_at(run.curve, budget)
        rows.append({"seed": seed, "trials": run.trials, "evaluations": run.used,
                     "hv": round(hv, 6), "hv_fraction": round(hv / table_hv, 4),
                     "budget_fraction_to_95pct": None if reached is None else round(reached / full_grid, 4),
                     "seconds": round(run.seconds, 1), "experiment": str(run.experiment)})
    payload = {"table": str(path), "arm": arm.name, "budget_evaluations": budget, "full_grid_evaluations": full_grid,
               "table_hypervolume": table_hv, "runs": rows}

    def human() -> None:
        print(f"{arm.name} on {path.name}: budget {budget} evaluations ({args.budget:.0%} of the full grid's {full_grid}); "
              f"table hypervolume {table_hv:.6f}")
        print(_table(rows, ["seed", "trials", "evaluations", "hv", "hv_fraction", "budget_fraction_to_95pct", "seconds"]))
        print(f"experiments: {storage}  (robusttune report <experiment> draws any of them)")

    _emit(payload, args.json, human)
    return 0


def register(commands, common) -> None:
    bench = commands.add_parser("bench", help="the tabular search benchmark: tabulate a grid, replay searches on it")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", parser_class=type(bench))
    bench_commands.required = True
    tabulate = bench_commands.add_parser("tabulate", help="train every grid point of a space; store the learning curves")
    common(tabulate)
    tabulate.add_argument("space", metavar="SPACE", help="built-in space name (mini_full) or a YAML file with 'grid' values")
    tabulate.add_argument("--out", required=True, metavar="FILE", help="Parquet table to write")
    tabulate.add_argument("--storage", default="runs", metavar="DIR", help="where the grid's experiment goes (default: ./runs)")
    tabulate.add_argument("--name", help="experiment name (default: tabulate-<space>); an existing one is resumed")
    tabulate.add_argument("--concurrency", type=int, metavar="K", help="trials at a time (default: the space's)")
    tabulate.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: local")
    tabulate.add_argument("--overwrite", action="store_true", help="replace an existing table file")
    tabulate.set_defaults(handler=cmd_tabulate)

    replay = bench_commands.add_parser("replay", help="replay searches against a table through Ray Tune + Optuna + scheduler")
    replay.add_argument("table", metavar="TABLE", help="a table file, or 'mini_full' for the shipped table")
    replay.add_argument("--sampler", "--searcher", default="tpe", choices=["random", "tpe", "nsga2", "gp", "paper_grid"],
                        help="Optuna sampler, or the paper's 27-config grid (default: tpe)")
    replay.add_argument("--scheduler", default="mo_asha", choices=["none", "asha", "mo_asha"], help="early stopping (default: mo_asha)")
    replay.add_argument("--budget", type=float, default=0.4, metavar="F",
                        help="evaluations to spend, as a fraction of training the full grid (default 0.4)")
    replay.add_argument("--seeds", default="0", metavar="S,S,...", help="sampler seeds, one search each (default 0)")
    replay.add_argument("--grace-period", type=int, default=1, metavar="N", help="scheduler grace period in evaluations")
    replay.add_argument("--reduction-factor", type=float, default=3.0, metavar="ETA", help="scheduler reduction factor")
    replay.add_argument("--storage", metavar="DIR", help="keep the replays' experiments here (default: a temp folder)")
    replay.add_argument("--pace", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long per replayed evaluation (to watch a replay live, or interrupt it)")
    replay.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    replay.set_defaults(handler=cmd_replay)
