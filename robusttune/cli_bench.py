"""``robusttune bench tabulate`` and ``robusttune bench replay``: the tabular search benchmark."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from robusttune.errors import ConfigError


def cmd_tabulate(args: argparse.Namespace) -> int:
    from robusttune.cli import _emit
    from robusttune.experiment import MANIFEST, new_experiment_dir
    from robusttune.search.space import load_space
    from robusttune.search.sweep import SweepOptions, _frozen_space, resume_sweep, run_sweep
    from robusttune.search.table import grid_space, table_from_experiment, write_table

    from robusttune.cli import _cache_dir

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
        if args.concurrency is not None and args.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {args.concurrency}")
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
