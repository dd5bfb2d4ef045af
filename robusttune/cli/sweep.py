"""``robusttune sweep``, ``resume``, ``status`` and ``demo`` (the main job)."""

from __future__ import annotations

import argparse
import time

from robusttune.cli.output import add_common, emit, table, trial_columns, values
from robusttune.config import Tracker
from robusttune.methods import MergeName


def _print_result(result, args: argparse.Namespace) -> int:
    metrics = list(result.space.objective.keys)

    def human() -> None:
        print(f"\nPareto-optimal trials on ({', '.join(metrics)}), accuracies in %:")
        print(table(result.pareto, trial_columns(result.pareto, list(result.space.parameters))) if result.pareto
              else "(no complete trial yet)")
        counts = result.counts
        print(f"\n{sum(counts.values())} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}) in {result.seconds:.0f} s")
        if result.sentences:
            print("\nConfirmation (accuracies in %, 95% Student-t intervals over seeds, gaps paired by seed):")
            for line in result.sentences:
                print(f"- {line}")
        print(f"experiment: {result.experiment}   (status: robusttune status {result.experiment})")
        for name, place in result.trackers.items():
            print(f"{name} logs: {place}")

    emit(result.to_dict(), args.json, human)
    return 0


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="Ray Tune's own tables too (by default: one line per trial event and the heartbeats)")


def verbosity(args: argparse.Namespace) -> int:
    """0: nothing but the JSON line (``--json``); 1: one line per trial event; 2: Ray Tune's tables too."""
    return 0 if args.json else 2 if args.verbose else 1


def add_loggers(parser: argparse.ArgumentParser, *, resume: bool = False) -> None:
    parser.add_argument("--logger", action="append", choices=values(Tracker),
                        help="log to an experiment tracker (repeatable; W&B offline and a local MLflow store by default)"
                             + ("; default: the sweep's own" if resume else ""))


def cmd_sweep(args: argparse.Namespace) -> int:
    from robusttune import api

    result = api.sweep(args.space, storage=args.storage, name=args.name, trials=args.trials,
                       concurrency=args.concurrency, seed=args.seed, address=args.address,
                       max_failures=args.max_failures, overwrite=args.overwrite, cache_dir=args.cache_dir,
                       verbose=verbosity(args), loggers=args.logger or (), heartbeat_seconds=args.heartbeat,
                       warm_start=args.warm_start, warm_top=args.top)
    return _print_result(result, args)


def cmd_resume(args: argparse.Namespace) -> int:
    from robusttune import api

    result = api.resume(args.experiment, address=args.address, max_failures=args.max_failures,
                        cache_dir=args.cache_dir, verbose=verbosity(args),
                        allow_space_change=args.allow_space_change, loggers=args.logger)
    return _print_result(result, args)


def cmd_status(args: argparse.Namespace) -> int:
    from robusttune import api
    from robusttune.progress import duration

    found = api.status(args.experiment, plan=args.plan, cache_dir=args.cache_dir)

    def human() -> None:
        print(f"experiment {found.experiment} (space '{found.space}', {found.planned} trials planned)")
        print(table(found.trials, trial_columns(found.trials, found.parameters)) if found.trials else "(no trial has reported yet)")
        print(", ".join(f"{v} {k}" for k, v in found.counts.items()))
        tied = sorted({tuple(sorted([t, *others])) for t, others in found.ties.items() if others})
        if tied:
            print("front trials the evaluation's noise cannot order (within each other's 95% intervals): "
                  + "; ".join(" ~ ".join(group) for group in tied))
        if found.confirmation:
            confirmed = found.confirmation
            print(f"confirmation: {confirmed['runs']} run(s) recorded ({confirmed['failed']} failed), "
                  f"{confirmed['curve_points']} WiSE-FT point(s)")
        if found.warm_start:
            warm = found.warm_start
            print(f"warm start: its first {len(warm.get('points', []))} trial(s) are configurations of {warm.get('source')}"
                  + (f" ({len(warm['dropped'])} value(s) outside this space were sampled afresh)" if warm.get("dropped") else ""))
        if found.above_wise.get("rows"):
            print("above vanilla FT's WiSE-FT at equal ID (complete trials; 95% Wilson / bootstrap intervals):")
            for line in found.above_wise["sentences"]:
                print("  " + line)
        if found.cost:
            total = found.cost["total"]
            print(f"cost of {total['trials']} trial(s): {total['device_s']:.0f} device-s (start-up {total['startup_s']:.0f}, "
                  f"training {total['train_s']:.0f}, evaluation {total['eval_s']:.0f}), {total['images_trained']} images "
                  f"trained, {total['images_evaluated']} evaluated, on {', '.join(total['devices'])}")
            for trial_id, row in sorted(found.cost.get("plan", {}).get("trials", {}).items()):
                print(f"  {trial_id}: {row['device_s']:.1f} device-s measured, {row['planned_device_s']:.1f} planned "
                      f"(x{row['ratio']}), {row['evaluations']}/{row['planned_evaluations']} evaluations")
        if found.merges:
            print("merges: " + ", ".join(f"{method} of {len(members)} trial(s)" for method, members in found.merges.items()))
        for trial_id, beat in sorted(found.progress.items()):
            ago = max(0.0, time.time() - float(beat["time"] if beat.get("time") is not None else time.time()))
            print(f"trial {trial_id}: step {beat.get('step')}/{beat.get('total_steps')}, loss {beat.get('loss', float('nan')):.4f}, "
                  f"{beat.get('images_per_s', 0):.0f} img/s, ETA {duration(beat.get('eta_s') or 0)} (heartbeat {ago:.0f} s ago)")

    emit({"trials": found.trials, "counts": found.counts, "planned": found.planned, "progress": found.progress,
          "confirmation": found.confirmation, "ties": found.ties, "merges": found.merges,
          "warm_start": found.warm_start, "above_wise": found.above_wise, "cost": found.cost},
         args.json, human)
    return 0


VERDICT_COLUMNS = ("source", "method", "seeds", "id_acc_mean", "ood_mean_mean", "delta_ood_mean", "delta_ood_low", "delta_ood_high",
                   "delta_ood_verdict")


def cmd_confirm(args: argparse.Namespace) -> int:
    from robusttune import api

    trials = [t.strip() for t in args.trials.split(",") if t.strip()] if args.trials else None
    result = api.confirm(args.experiment, seeds=args.seeds, top=args.top, trials=trials, per_method=args.per_method,
                         merges=args.merge, address=args.address, cache_dir=args.cache_dir)

    def human() -> None:
        print(f"confirmation of {result.experiment}: {result.written} row(s) written in {result.seconds:.0f} s "
              f"(accuracies and gaps in %, 95% Student-t intervals over seeds)")
        print(table(result.verdicts, [c for c in VERDICT_COLUMNS if any(c in r for r in result.verdicts)]))
        for line in result.sentences:
            print(f"- {line}")

    emit(result.to_dict(), args.json, human)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from robusttune import api

    def ready(world) -> None:
        if not args.json:
            print(f"mini world ready (tiny CLIP: {world.weights_source}); zero-shot ID {100 * world.zero_shot['id_acc']:.1f}, "
                  f"OOD mean {100 * world.zero_shot['ood_mean']:.1f}", flush=True)
            print(f"sweeping 'demo' -> {args.storage}/{args.name or 'demo-<time>'}", flush=True)

    result = api.demo(storage=args.storage, name=args.name, trials=args.trials, seed=args.seed, cache_dir=args.cache_dir,
                      verbose=verbosity(args), on_ready=ready)
    code = _print_result(result.sweep, args)
    if not args.json:
        print(f"report: {result.report.files.get('index.html')} (pareto.png, trials.csv, front.csv beside it)")
    return code


def register(commands) -> None:
    sweep = commands.add_parser("sweep", help="run a hyperparameter search over a YAML search space")
    add_common(sweep)
    sweep.add_argument("space", metavar="SPACE", help="built-in space name (demo, mini_full, paper) or a YAML file")
    sweep.add_argument("--name", help="experiment name (default: <space>-<time>)")
    sweep.add_argument("--storage", default="runs", metavar="DIR", help="where experiments go (default: ./runs)")
    sweep.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the space's budget)")
    sweep.add_argument("--concurrency", type=int, metavar="K", help="trials at a time (default: the space's budget)")
    sweep.add_argument("--address", metavar="ADDR", help="Ray cluster address (auto, ray://host:10001); default: local")
    sweep.add_argument("--seed", type=int, metavar="S", help="sampler and training seed (default: the space's)")
    sweep.add_argument("--max-failures", type=int, default=0, metavar="N", help="retries of a crashed trial from its checkpoint")
    sweep.add_argument("--overwrite", action="store_true", help="replace an existing experiment of the same name")
    sweep.add_argument("--warm-start", metavar="EXPDIR", help="first run an earlier experiment's best configurations "
                                                               "(its Pareto front), mapped onto this space")
    sweep.add_argument("--top", type=int, metavar="N", help="with --warm-start: its N best complete trials instead of "
                                                           "its front (by non-dominated rank, then crowding distance)")
    add_loggers(sweep)
    add_verbose(sweep)
    sweep.add_argument("--heartbeat", type=float, default=30.0, metavar="S",
                       help="trials report step, loss, images/s and ETA between evaluations at most every S seconds (default 30)")
    sweep.set_defaults(handler=cmd_sweep)

    resume = commands.add_parser("resume", help="continue an interrupted sweep")
    add_common(resume)
    resume.add_argument("experiment", metavar="EXPDIR")
    resume.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: local")
    resume.add_argument("--max-failures", type=int, default=0, metavar="N")
    add_loggers(resume, resume=True)
    add_verbose(resume)
    resume.add_argument("--allow-space-change", action="store_true",
                        help="resume although space.yaml was edited since the sweep started")
    resume.set_defaults(handler=cmd_resume)

    confirm = commands.add_parser("confirm", help="train the front's configurations with more seeds; verdicts against "
                                                  "WiSE-FT at equal ID")
    add_common(confirm)
    confirm.add_argument("experiment", metavar="EXPDIR")
    confirm.add_argument("--seeds", type=int, metavar="K", help="seeds per configuration (default: the space's confirm "
                                                               "key, else 3; seed 0 of a trial is the trial itself)")
    confirm.add_argument("--top", type=int, metavar="N", help="configurations from the front, by non-dominated rank "
                                                             "then crowding distance (default: the space's, else 5)")
    confirm.add_argument("--trials", metavar="ID,ID,...", help="confirm these trials instead of the top N")
    confirm.add_argument("--per-method", action="store_true", default=None,
                         help="the top N of each method's trials (default: the space's confirm key)")
    confirm.add_argument("--merge", action="append", metavar="NAME", choices=[m.value for m in MergeName],
                         help="confirm this recorded merge too (repeat for more; default: the space's confirm key)")
    confirm.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: local")
    confirm.set_defaults(handler=cmd_confirm)

    status = commands.add_parser("status", help="show an experiment's trials (does not start Ray)")
    status.add_argument("experiment", metavar="EXPDIR")
    status.add_argument("--plan", action="store_true",
                        help="compare each trial's measured cost with `robusttune plan`'s prediction for the space "
                             "(calibrates first unless its measurements are cached)")
    add_common(status)
    status.set_defaults(handler=cmd_status)

    demo = commands.add_parser("demo", help="the main job: sweep the built-in 'demo' space on the mini world")
    add_common(demo)
    demo.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the demo space's, 16)")
    demo.add_argument("--name", help="experiment name (default: demo-<time>)")
    demo.add_argument("--storage", default="runs", metavar="DIR", help="where experiments go (default: ./runs)")
    demo.add_argument("--seed", type=int, metavar="S")
    add_verbose(demo)
    demo.set_defaults(handler=cmd_demo)
