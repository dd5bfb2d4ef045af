"""``robusttune train``, ``robusttune wise`` and ``robusttune baselines`` (single runs, no search)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robusttune.cli.output import add_common, add_placement, emit, table, values
from robusttune.config import CamMethod, DistillKind, MethodName, Preset, Refill, Region, Schedule
from robusttune.errors import ConfigError, ParameterError, TrainingError
from robusttune.metrics import metric_columns

TASK_KEYS = ("world", "imagenet")


def _train_and_task_config(args: argparse.Namespace):
    """The run's config: the file's (``method: {name: ..., <knobs>}`` nested), then the flags over it (a method's
    knob flags go under its ``method``; ``--method`` naming another method starts that method from its defaults)."""
    from robusttune.config import TRAIN_KEYS, TaskSpec, TrainConfig, load_mapping, parse

    raw = load_mapping(args.config) if args.config else {}
    source = args.config or "command line"
    task_part = {k: raw.pop(k) for k in TASK_KEYS if k in raw}
    flags = {"region": args.region, "refill": args.refill, "mask_threshold": args.threshold, "mask_ratio": args.ratio,
             "w_distill": args.w_distill, "distill": args.distill, "cam": args.cam, "strength": args.strength,
             "lp_fraction": args.lp_fraction, "lr": args.lr, "steps": args.steps,
             "batch_size": args.batch_size, "seed": args.seed,
             "eval_every": args.eval_every, "preset": args.preset, "schedule": args.schedule,
             "device": args.device, "precision": args.precision, "workers": args.workers}
    given = {k: v for k, v in flags.items() if v is not None}
    method = raw.pop("method", {})
    method = dict(method) if isinstance(method, dict) else {"name": method}
    if args.method is not None and args.method != str(method.get("name", args.method)):
        method = {}
    if args.method is not None:
        method["name"] = args.method
    knobs = {k: v for k, v in given.items() if k not in TRAIN_KEYS}
    if "mask_ratio" in knobs:
        method.pop("mask_threshold", None)
    if "mask_threshold" in knobs:
        method.pop("mask_ratio", None)
    if knobs.get("region") == "none" and "refill" not in knobs:
        method.pop("refill", None)
    if "steps" in given:
        raw.pop("epochs", None)
    common = {k: v for k, v in given.items() if k in TRAIN_KEYS}
    try:
        config = parse(TrainConfig, {**raw, **common, "method": {**method, **knobs}}, source)
    except ConfigError as error:
        raise _blame_flag(error, source, given) from None
    return config, parse(TaskSpec, task_part, source)


FLAG_NAMES = {"mask_threshold": "--threshold", "mask_ratio": "--ratio"}  # the keys whose flag is not --<key>


def _blame_flag(error: ConfigError, source: str, given: dict[str, Any]) -> ConfigError:
    """A value that came from a flag is the flag's fault, not the config file's: ``--batch-size must ...``."""
    message = str(error)
    rest = message[len(source) + 2:] if message.startswith(f"{source}: ") else message
    where, _, problem = rest.partition(": ")
    key = where.split(".")[-1].split("[")[0]
    if problem and key in given:
        return ConfigError(f"{FLAG_NAMES.get(key, '--' + key.replace('_', '-'))} {given[key]!r}: {problem}")
    return error


def _print_evaluation(row: dict[str, Any]) -> None:
    shown = " ".join(f"{k}={100 * v:.1f}" for k, v in row["metrics"].items())
    print(f"step {row['step']:>5}  {shown}", flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from robusttune import api

    config, spec = _train_and_task_config(args)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    summary = api.train(config, task=spec, out=out, cache_dir=args.cache_dir, resume=args.resume,
                        overwrite=args.overwrite, threads=args.threads,
                        on_evaluation=None if args.json else _print_evaluation)

    def human() -> None:
        print(table([summary.metrics], metric_columns(summary.metrics)))
        print(f"{summary.status} in {summary.seconds:.1f} s; metrics, checkpoints and config in {out}")
        if summary.failure:
            print(f"failure: {summary.failure}")

    emit(summary.to_dict(), args.json, human)
    if summary.status != "complete":
        raise TrainingError(f"training failed: {summary.failure}")
    return 0


def _alphas(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(a) for a in text.split(","))
    except ValueError:
        raise ParameterError("alphas", f"must be comma-separated numbers, got {text!r}") from None


def cmd_wise(args: argparse.Namespace) -> int:
    from robusttune import api

    rows = api.wise(args.finetuned, zero_shot=args.zero_shot, alphas=_alphas(args.alphas), out=args.out,
                    cache_dir=args.cache_dir, threads=args.threads, device=args.device or "auto",
                    precision=args.precision or "auto")

    def human() -> None:
        print(table(rows, ["alpha", *metric_columns(rows[0])]))

    emit({"rows": rows}, args.json, human)
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from robusttune import api
    from robusttune.api.runs import BASELINE_RUNS

    out = Path(args.out) if args.out else Path("runs") / time.strftime("baselines-%Y%m%d-%H%M%S")
    if not args.json:
        print(f"fine-tuning {len(BASELINE_RUNS) - 1} variants on the mini world, seed {args.seed}, {args.steps} steps each",
              flush=True)

    def show(row: dict[str, Any]) -> None:
        if not args.json:
            print(f"  {row['method']}: ID {100 * row['id_acc']:.1f}  OOD mean {100 * row['ood_mean']:.1f}", flush=True)

    result = api.baselines(out=out, steps=args.steps, seed=args.seed, cache_dir=args.cache_dir, threads=args.threads,
                           on_row=show)

    def human() -> None:
        print()
        print(table(result.rows, ["method", *metric_columns(result.rows[0])]))
        print(f"\naccuracies in %; {result.seconds:.0f} s on {result.threads} threads (tiny CLIP: {result.weights_source}); "
              f"runs in {result.out}")

    emit(result.to_dict(), args.json, human)
    return 0


def register(commands) -> None:
    train = commands.add_parser("train", help="fine-tune once (mini world by default, or CLIP on ImageNet folders)")
    add_common(train, config_help="YAML/JSON with TrainConfig keys and optionally a 'world' or 'imagenet' section")
    train.add_argument("--method", choices=values(MethodName), help="what to train (default: the paper's "
                       "masked_distill; ft, lp, lp_ft, l2sp: the field's baselines)")
    train.add_argument("--region", choices=values(Region), help="masked_distill: patches to mask (none: clean images)")
    train.add_argument("--refill", choices=values(Refill), help="how masked patches are refilled")
    form = train.add_mutually_exclusive_group()
    form.add_argument("--threshold", type=float, metavar="T", help="mask by normalised CAM threshold (probability for random)")
    form.add_argument("--ratio", type=float, metavar="R", help="mask exactly round(R * patches) patches")
    train.add_argument("--w-distill", type=float, metavar="W", help="masked_distill: distillation weight (0 = vanilla fine-tuning)")
    train.add_argument("--distill", choices=values(DistillKind), help="distil image features (MSE) or logits (KD)")
    train.add_argument("--cam", choices=values(CamMethod), help="class activation map method")
    train.add_argument("--strength", type=float, metavar="A", help="l2sp: alpha of the penalty toward the pre-trained weights")
    train.add_argument("--lp-fraction", type=float, metavar="F", help="lp_ft: share of the steps that train the head alone")
    train.add_argument("--preset", choices=values(Preset), help="every official default of the paper's code at once")
    train.add_argument("--schedule", choices=values(Schedule), help="lr schedule (onecycle: the official one)")
    train.add_argument("--lr", type=float, metavar="LR")
    train.add_argument("--steps", type=int, metavar="N", help="optimizer steps (0 = evaluate the zero-shot model)")
    train.add_argument("--batch-size", type=int, metavar="B")
    train.add_argument("--eval-every", type=int, metavar="N", help="also evaluate every N steps")
    train.add_argument("--seed", type=int, metavar="S")
    train.add_argument("--threads", type=int, metavar="K", help="torch threads (default: all cores)")
    train.add_argument("--workers", type=int, metavar="N",
                       help="data-parallel workers on a local Ray (Ray Train): one GPU each; on CPUs (gloo) only with --device cpu")
    add_placement(train)
    train.add_argument("--out", metavar="DIR", help="run directory (default: runs/train-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    train.set_defaults(handler=cmd_train)

    wise = commands.add_parser("wise", help="evaluate the WiSE-FT interpolation grid for a fine-tuned checkpoint")
    add_common(wise)
    wise.add_argument("finetuned", metavar="FINETUNED", help="final.pt written by 'robusttune train'")
    wise.add_argument("--zero-shot", metavar="FILE", help="zero-shot checkpoint (default: rebuilt from the run's task)")
    wise.add_argument("--alphas", metavar="A,B,...", help="mixing coefficients (default 0,0.1,...,1)")
    wise.add_argument("--threads", type=int, metavar="K")
    add_placement(wise)
    wise.add_argument("--out", metavar="FILE", help="also write the rows as JSON lines")
    wise.set_defaults(handler=cmd_wise)

    baselines = commands.add_parser("baselines", help="zero-shot, vanilla FT, WiSE-FT and FD reference runs on the mini world")
    add_common(baselines)
    baselines.add_argument("--steps", type=int, default=150, metavar="N", help="fine-tuning steps per run (default 150)")
    baselines.add_argument("--seed", type=int, default=0, metavar="S")
    baselines.add_argument("--threads", type=int, metavar="K")
    baselines.add_argument("--out", metavar="DIR", help="where runs go (default: runs/baselines-<time>)")
    baselines.set_defaults(handler=cmd_baselines)
