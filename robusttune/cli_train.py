"""``robusttune train``, ``robusttune wise`` and ``robusttune demo`` (single-run commands)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from robusttune.errors import ConfigError, TrainingError

METRIC_ORDER = ("id_acc", "id_val_acc")
TASK_KEYS = ("world", "imagenet")


def _metric_columns(metrics: dict[str, Any]) -> list[str]:
    oods = sorted(k for k in metrics if k.startswith("ood_") and k != "ood_mean")
    return [k for k in METRIC_ORDER if k in metrics] + oods + (["ood_mean"] if "ood_mean" in metrics else [])


def _set_threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


def _check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output path exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"{out}: output directory is not empty (pass --resume to continue it or --overwrite to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{out}: output directory is not writable ({error.strerror})") from None


def _train_and_task_config(args: argparse.Namespace):
    from robusttune.config import TaskSpec, TrainConfig, load_mapping, parse

    raw = load_mapping(args.config) if args.config else {}
    source = args.config or "command line"
    task_part = {k: raw.pop(k) for k in TASK_KEYS if k in raw}
    flags = {"region": args.region, "refill": args.refill, "mask_threshold": args.threshold, "mask_ratio": args.ratio,
             "w_distill": args.w_distill, "distill": args.distill, "lr": args.lr, "steps": args.steps,
             "batch_size": args.batch_size, "seed": args.seed, "cam": args.cam, "trainable": args.trainable,
             "eval_every": args.eval_every}
    given = {k: v for k, v in flags.items() if v is not None}
    if "mask_ratio" in given:
        raw.pop("mask_threshold", None)
    if "mask_threshold" in given:
        raw.pop("mask_ratio", None)
    if "steps" in given:
        raw.pop("epochs", None)
    if given.get("region") == "none" and "refill" not in given:
        raw.pop("refill", None)
    return parse(TrainConfig, {**raw, **given}, source), parse(TaskSpec, task_part, source)


def run_training(config, spec, out: Path, cache_dir: Path, *, resume: bool = False, echo: bool = True) -> dict[str, Any]:
    """One fine-tuning run writing ``metrics.jsonl``, ``checkpoint.pt`` (latest, resumable) and ``final.pt``."""
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint
    from robusttune.training.loop import train
    from robusttune.training.tasks import build_task

    student, task = build_task(spec, cache_dir)
    teacher = frozen_copy(student)
    checkpoint_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
    payload = load_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None
    if payload is not None:
        if json.loads(payload["config"]) != config.to_dict():
            raise ConfigError(f"{checkpoint_path}: checkpoint was written with a different config; cannot resume")
        history = json.loads(payload["history"])
        metrics_path.write_text("".join(json.dumps({**r, **r["metrics"]}) + "\n" for r in history))
    else:
        metrics_path.write_text("")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), **spec.to_dict()}, indent=2) + "\n")

    def report(row: dict[str, Any]) -> None:
        with metrics_path.open("a") as stream:
            stream.write(json.dumps(row, default=float) + "\n")
        if echo and "metrics" in row:
            shown = " ".join(f"{k}={100 * v:.1f}" for k, v in row["metrics"].items())
            print(f"step {row['step']:>5}  {shown}", flush=True)

    started = time.perf_counter()
    result = train(config, student, teacher, task, report=report,
                   save_checkpoint=lambda state: save_checkpoint(checkpoint_path, state), resume=payload)
    if result.status == "complete":
        save_checkpoint(out / "final.pt", {"model": student.state_dict(), "config": json.dumps(config.to_dict()),
                                           "task": json.dumps(spec.to_dict()), "metrics": json.dumps(result.metrics)})
    summary = {"status": result.status, "failure": result.failure, "steps": result.steps, **result.metrics,
               "seconds": round(time.perf_counter() - started, 2), "out": str(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def cmd_train(args: argparse.Namespace) -> int:
    from robusttune.cli import _cache_dir, _emit, _table

    config, spec = _train_and_task_config(args)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    _check_out_dir(out, resume=args.resume, overwrite=args.overwrite)
    _set_threads(args.threads)
    summary = run_training(config, spec, out, _cache_dir(args.cache_dir), resume=args.resume, echo=not args.json)

    def human() -> None:
        metrics = {k: v for k, v in summary.items() if k.startswith(("id_", "ood_"))}
        print(_table([metrics], _metric_columns(metrics)))
        print(f"{summary['status']} in {summary['seconds']:.1f} s; metrics, checkpoints and config in {out}")
        if summary["failure"]:
            print(f"failure: {summary['failure']}")

    _emit(summary, args.json, human)
    if summary["status"] != "complete":
        raise TrainingError(f"training failed: {summary['failure']}")
    return 0


def cmd_wise(args: argparse.Namespace) -> int:
    from robusttune.cli import _cache_dir, _emit, _table
    from robusttune.config import TaskSpec, parse
    from robusttune.method.wise import DEFAULT_ALPHAS
    from robusttune.training.checkpoint import load_checkpoint
    from robusttune.training.tasks import build_task
    from robusttune.training.wise import wise_curve

    alphas = DEFAULT_ALPHAS
    if args.alphas:
        try:
            alphas = tuple(float(a) for a in args.alphas.split(","))
        except ValueError:
            raise ConfigError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from None
        if any(not 0.0 <= a <= 1.0 for a in alphas):
            raise ConfigError(f"--alphas must lie in [0, 1], got {args.alphas!r}")
    finetuned = load_checkpoint(args.finetuned)
    if "task" not in finetuned:
        raise ConfigError(f"{args.finetuned}: not a final checkpoint of 'robusttune train' (no task); use its final.pt")
    spec = parse(TaskSpec, json.loads(finetuned["task"]), str(args.finetuned))
    _set_threads(args.threads)
    model, task = build_task(spec, _cache_dir(args.cache_dir))
    zero_shot = load_checkpoint(args.zero_shot)["model"] if args.zero_shot else {k: v.clone() for k, v in model.state_dict().items()}
    rows = wise_curve(model, zero_shot, finetuned["model"], task.eval_sets, alphas=alphas)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def human() -> None:
        print(_table(rows, ["alpha", *_metric_columns(rows[0])]))

    _emit({"rows": rows}, args.json, human)
    return 0


def register(commands, common) -> None:
    train = commands.add_parser("train", help="fine-tune once (mini world by default, or CLIP on ImageNet folders)")
    common(train, config_help="YAML/JSON with TrainConfig keys and optionally a 'world' or 'imagenet' section")
    train.add_argument("--region", choices=["object", "context", "random", "none"], help="patches to mask (none: clean images)")
    train.add_argument("--refill", choices=["none", "single", "multi"], help="how masked patches are refilled")
    form = train.add_mutually_exclusive_group()
    form.add_argument("--threshold", type=float, metavar="T", help="mask by normalised CAM threshold (probability for random)")
    form.add_argument("--ratio", type=float, metavar="R", help="mask exactly round(R * patches) patches")
    train.add_argument("--w-distill", type=float, metavar="W", help="distillation weight (0 = vanilla fine-tuning)")
    train.add_argument("--distill", choices=["feature", "logit"], help="distil image features (MSE) or logits (KD)")
    train.add_argument("--cam", choices=["relevance", "gradcam"], help="class activation map method")
    train.add_argument("--trainable", choices=["all", "head"], help="'head' is a linear probe")
    train.add_argument("--lr", type=float, metavar="LR")
    train.add_argument("--steps", type=int, metavar="N", help="optimizer steps (0 = evaluate the zero-shot model)")
    train.add_argument("--batch-size", type=int, metavar="B")
    train.add_argument("--eval-every", type=int, metavar="N", help="also evaluate every N steps")
    train.add_argument("--seed", type=int, metavar="S")
    train.add_argument("--threads", type=int, metavar="K", help="torch threads (default: all cores)")
    train.add_argument("--out", metavar="DIR", help="run directory (default: runs/train-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    train.set_defaults(handler=cmd_train)

    wise = commands.add_parser("wise", help="evaluate the WiSE-FT interpolation grid for a fine-tuned checkpoint")
    common(wise)
    wise.add_argument("finetuned", metavar="FINETUNED", help="final.pt written by 'robusttune train'")
    wise.add_argument("--zero-shot", metavar="FILE", help="zero-shot checkpoint (default: rebuilt from the run's task)")
    wise.add_argument("--alphas", metavar="A,B,...", help="mixing coefficients (default 0,0.1,...,1)")
    wise.add_argument("--threads", type=int, metavar="K")
    wise.add_argument("--out", metavar="FILE", help="also write the rows as JSON lines")
    wise.set_defaults(handler=cmd_wise)

    from robusttune import cli_baselines, cli_bench, cli_sweep

    cli_baselines.register(commands, common)
    cli_sweep.register(commands, common)
    cli_bench.register(commands, common)
