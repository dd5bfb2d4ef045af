"""``robusttune sweep``, ``resume``, ``status`` and ``demo``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robusttune.errors import ConfigError

SUMMARY_COLUMNS = ("trial_id", "status", "step", "id_val_acc", "id_acc", "ood_mean", "objective")


def _trial_rows(experiment: Path) -> list[dict[str, Any]]:
    from robusttune.experiment import latest_by_trial

    rows = []
    for trial_id, row in sorted(latest_by_trial(experiment).items()):
        sampled = row.get("sampled", {})
        rows.append({"trial_id": trial_id, "status": row.get("status"), "step": row.get("step"),
                     **{k: v for k, v in row.items() if k.startswith(("id_", "ood_")) or k in ("objective", "failure")},
                     **{k: v for k, v in sampled.items() if k != "seed"}})
    return rows


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    from robusttune.experiment import STATUSES

    return {status: sum(1 for r in rows if r["status"] == status) for status in STATUSES}


def pareto_rows(rows: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    from robusttune.analysis.pareto import non_dominated

    complete = [r for r in rows if r["status"] == "complete" and all(m in r for m in metrics)]
    front = non_dominated([[r[m] for m in metrics] for r in complete])
    return sorted((complete[i] for i in front), key=lambda r: -r[metrics[0]])


def _columns(rows: list[dict[str, Any]], parameters: list[str]) -> list[str]:
    oods = sorted({k for r in rows for k in r if k.startswith("ood_") and k != "ood_mean"})
    return ["trial_id", "status", "id_val_acc", "id_acc", *oods, "ood_mean", *parameters]


def _sweep_options(args: argparse.Namespace, space, *, trials=None, concurrency=None):
    from robusttune.cli import _cache_dir
    from robusttune.search.sweep import SweepOptions

    return SweepOptions(trials=trials or space.budget.trials, concurrency=concurrency or space.budget.concurrency,
                        seed=args.seed if getattr(args, "seed", None) is not None else space.sampler.seed,
                        address=getattr(args, "address", None), cache_dir=_cache_dir(args.cache_dir),
                        max_failures=getattr(args, "max_failures", 0) or 0, verbose=0 if args.json else 1)


def _finish(experiment: Path, space, args: argparse.Namespace, seconds: float) -> int:
    from robusttune.cli import _emit, _table

    rows = _trial_rows(experiment)
    front = pareto_rows(rows, list(space.objective.metrics))
    counts = _counts(rows)
    payload = {"experiment": str(experiment), "counts": counts, "pareto": front, "seconds": round(seconds, 1)}

    def human() -> None:
        print(f"\nPareto-optimal trials on ({', '.join(space.objective.metrics)}), accuracies in %:")
        print(_table(front, _columns(front, list(space.parameters))) if front else "(no complete trial yet)")
        print(f"\n{sum(counts.values())} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}) in {seconds:.0f} s")
        print(f"experiment: {experiment}   (status: robusttune status {experiment})")

    _emit(payload, args.json, human)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from robusttune.experiment import new_experiment_dir
    from robusttune.search.space import load_space
    from robusttune.search.sweep import run_sweep

    space, text = load_space(args.space)
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {args.concurrency}")
    options = _sweep_options(args, space, trials=args.trials, concurrency=args.concurrency)
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = new_experiment_dir(Path(args.storage), name, overwrite=args.overwrite)
    started = time.perf_counter()
    run_sweep(experiment, space, text, options)
    return _finish(experiment, space, args, time.perf_counter() - started)


def cmd_resume(args: argparse.Namespace) -> int:
    from robusttune.experiment import check_experiment
    from robusttune.search.sweep import _frozen_space, resume_sweep

    experiment = check_experiment(Path(args.experiment))
    space, _ = _frozen_space(experiment)
    options = _sweep_options(args, space)
    started = time.perf_counter()
    resume_sweep(experiment, options)
    return _finish(experiment, space, args, time.perf_counter() - started)


def cmd_status(args: argparse.Namespace) -> int:
    from robusttune.cli import _emit, _table
    from robusttune.experiment import check_experiment, read_manifest

    experiment = check_experiment(Path(args.experiment))
    manifest = read_manifest(experiment)
    rows = _trial_rows(experiment)
    counts = _counts(rows)

    def human() -> None:
        print(f"experiment {experiment} (space '{manifest.get('space')}', {manifest.get('trials')} trials planned)")
        print(_table(rows, _columns(rows, manifest.get("parameters", []))) if rows else "(no trial has reported yet)")
        print(", ".join(f"{v} {k}" for k, v in counts.items()))

    _emit({"trials": rows, "counts": counts, "planned": manifest.get("trials")}, args.json, human)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from robusttune.cli import _cache_dir
    from robusttune.config import default_world
    from robusttune.experiment import new_experiment_dir
    from robusttune.search.space import load_space
    from robusttune.search.sweep import run_sweep
    from robusttune.training.mini_world import prepare_world

    started = time.perf_counter()
    prepared = prepare_world(default_world(), _cache_dir(args.cache_dir))
    zs = prepared.zero_shot
    print(f"mini world ready (tiny CLIP: {prepared.source}); zero-shot ID {100 * zs['id_acc']:.1f}, "
          f"OOD mean {100 * zs['ood_mean']:.1f}", flush=True)
    space, text = load_space("demo")
    options = _sweep_options(args, space, trials=args.trials)
    name = args.name or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = new_experiment_dir(Path(args.storage), name, overwrite=False)
    print(f"sweeping '{space.name}': {options.trials} trials, {options.concurrency} at a time -> {experiment}", flush=True)
    run_sweep(experiment, space, text, options)
    code = _finish(experiment, space, args, time.perf_counter() - started)
    from robusttune.analysis.report import write_report
    from robusttune.gallery import write_galleries

    (experiment / "report").mkdir(exist_ok=True)
    write_galleries(experiment, experiment / "report", cache_dir=_cache_dir(args.cache_dir))
    report = write_report(experiment)
    if not args.json:
        print(f"report: {report['files'].get('index.html')} (pareto.png, trials.csv, front.csv beside it)")
    return code


def register(commands, common) -> None:
    sweep = commands.add_parser("sweep", help="run a hyperparameter search over a YAML search space")
    common(sweep)
    sweep.add_argument("space", metavar="SPACE", help="built-in space name (demo, mini_full, paper) or a YAML file")
    sweep.add_argument("--name", help="experiment name (default: <space>-<time>)")
    sweep.add_argument("--storage", default="runs", metavar="DIR", help="where experiments go (default: ./runs)")
    sweep.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the space's budget)")
    sweep.add_argument("--concurrency", type=int, metavar="K", help="trials at a time (default: the space's budget)")
    sweep.add_argument("--address", metavar="ADDR", help="Ray cluster address (auto, ray://host:10001); default: local")
    sweep.add_argument("--seed", type=int, metavar="S", help="sampler and training seed (default: the space's)")
    sweep.add_argument("--max-failures", type=int, default=0, metavar="N", help="retries of a crashed trial from its checkpoint")
    sweep.add_argument("--overwrite", action="store_true", help="replace an existing experiment of the same name")
    sweep.set_defaults(handler=cmd_sweep)

    resume = commands.add_parser("resume", help="continue an interrupted sweep")
    common(resume)
    resume.add_argument("experiment", metavar="EXPDIR")
    resume.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: local")
    resume.add_argument("--max-failures", type=int, default=0, metavar="N")
    resume.set_defaults(handler=cmd_resume)

    status = commands.add_parser("status", help="show an experiment's trials (does not start Ray)")
    status.add_argument("experiment", metavar="EXPDIR")
    status.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    status.set_defaults(handler=cmd_status)

    demo = commands.add_parser("demo", help="the main job: sweep the built-in 'demo' space on the mini world")
    common(demo)
    demo.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the demo space's, 16)")
    demo.add_argument("--name", help="experiment name (default: demo-<time>)")
    demo.add_argument("--storage", default="runs", metavar="DIR", help="where experiments go (default: ./runs)")
    demo.add_argument("--seed", type=int, metavar="S")
    demo.set_defaults(handler=cmd_demo)
    register_report(commands)
    register_launch(commands)


def cmd_report(args: argparse.Namespace) -> int:
    from robusttune.analysis.report import FORMATS, write_report
    from robusttune.cli import _emit
    from robusttune.experiment import check_experiment

    experiment = check_experiment(Path(args.experiment))
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format must be a comma-separated subset of {','.join(FORMATS)}, got {args.format!r}")
    out = Path(args.out) if args.out else experiment / "report"
    galleries = {}
    if not args.no_gallery and ("png" in formats or "html" in formats):
        from robusttune.cli import _cache_dir
        from robusttune.gallery import write_galleries

        out.mkdir(parents=True, exist_ok=True)
        galleries = write_galleries(experiment, out, cache_dir=_cache_dir(getattr(args, "cache_dir", None)))
    summary = write_report(experiment, out, formats, logit_axes=args.logit_axes)
    summary["files"].update(galleries if "png" in formats else {})

    def human() -> None:
        for name, path in summary["files"].items():
            print(f"{name:<16} {path}")
        print(f"report written in {summary['seconds']:.1f} s")

    _emit({k: v for k, v in summary.items() if k != "hypervolume_over_trials"}, args.json, human)
    return 0


def register_report(commands) -> None:
    report = commands.add_parser("report", help="write the Pareto-front report of an experiment (HTML, PNG, CSV)")
    report.add_argument("experiment", metavar="EXPDIR")
    report.add_argument("--out", metavar="DIR", help="output folder (default: EXPDIR/report)")
    report.add_argument("--format", default="html,png,csv", metavar="LIST", help="any of html,png,csv (default: all)")
    report.add_argument("--logit-axes", action="store_true", help="logit-scaled accuracy axes, as in the WiSE-FT paper")
    report.add_argument("--no-gallery", action="store_true", help="skip the counterfactual gallery (needs torch and the checkpoints)")
    report.add_argument("--cache-dir", metavar="DIR", help="cache directory (for the gallery's data)")
    report.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    report.set_defaults(handler=cmd_report)


def cmd_launch(args: argparse.Namespace) -> int:
    from robusttune.search.launch import check_cluster_file, execute, plan, render
    from robusttune.search.space import load_space

    space, _ = load_space(args.space)  # fail here, not on the cluster, on a bad space
    cluster = Path(args.cluster)
    check_cluster_file(cluster)
    if not args.storage.startswith("/"):
        raise ConfigError(f"--storage must be an absolute path mounted on every node (shared storage), got {args.storage!r}")
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    steps = plan(args.space, cluster, name=name, storage=args.storage, token_auth=args.token_auth)
    lines = render(steps, token_auth=args.token_auth)
    if args.dry_run:
        print("\n".join(lines))
        return 0
    execute(steps, token_auth=args.token_auth)
    print("\n".join(line for line in lines[lines.index("# follow it"):]))
    return 0


def register_launch(commands) -> None:
    launch = commands.add_parser("launch", help="bring up a Ray cluster (cluster.yaml) and submit a sweep to it")
    launch.add_argument("space", metavar="SPACE", help="built-in space name or a YAML file (in the working directory)")
    launch.add_argument("--cluster", required=True, metavar="FILE", help="Ray cluster-launcher config (see cluster.yaml)")
    launch.add_argument("--storage", required=True, metavar="DIR", help="shared folder mounted on every node, e.g. /mnt/efs/runs")
    launch.add_argument("--name", help="experiment and job name (default: <space>-<time>)")
    launch.add_argument("--token-auth", action="store_true", help="the cluster uses Ray token authentication (RAY_AUTH_MODE=token)")
    launch.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    launch.set_defaults(handler=cmd_launch)
