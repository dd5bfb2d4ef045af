"""``robusttune plan SPACE``: what a sweep will cost before it is launched."""

from __future__ import annotations

import argparse

from robusttune.cli.output import add_common, emit


def _hours(hours: float) -> str:
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def cmd_plan(args: argparse.Namespace) -> int:
    from robusttune import api

    found = api.plan(args.space, trials=args.trials, calibrate=args.calibrate, cache_dir=args.cache_dir)
    calibration = found.calibration

    def human() -> None:
        source = "measured now" if calibration["measured"] else "cached; --calibrate measures again"
        print(f"space '{found.space}': {found.trials} trials, {found.concurrency} at a time, on {calibration['device']} "
              f"with {calibration['threads']} thread(s) (calibration {source})")
        print(f"per trial: {found.steps_per_trial} steps, {found.evaluations_per_trial} evaluations "
              f"({found.eval_images_per_trial} images), {_hours(found.trial_hours)} of which {100 * found.eval_share:.0f}% "
              f"evaluating; {found.storage_bytes_per_trial / 2**20:.0f} MiB of checkpoints kept")
        for name, share in found.methods.items():
            print(f"  {name:<34} {100 * share:5.1f}% of trials  {calibration['step_seconds'][name]:.3f} s/step")
        print(f"sweep: {_hours(found.sweep_hours)} device time ({100 * found.scheduler_saving:.0f}% saved by the "
              f"scheduler), {_hours(found.wall_hours)} wall at this concurrency, "
              f"{found.storage_bytes / 2**30:.2f} GiB of storage at most")

    emit({**found.to_dict()}, args.json, human)
    return 0


def register(commands) -> None:
    plan = commands.add_parser("plan", help="estimate a sweep's device-hours, evaluation share, storage and scheduler saving")
    add_common(plan)
    plan.add_argument("space", metavar="SPACE", help="built-in space name or a YAML file")
    plan.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the space's budget)")
    plan.add_argument("--calibrate", action="store_true", help="measure the step and evaluation costs again on this machine")
    plan.set_defaults(handler=cmd_plan)
