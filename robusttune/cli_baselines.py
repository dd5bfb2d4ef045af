"""``robusttune baselines``: the fixed reference runs on the mini world, side by side: zero-shot, vanilla
fine-tuning, WiSE-FT (alpha 0.5) of it, feature distillation on clean images, and the paper's headline
counterfactual variant (object mask, single-donor refill).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_RUNS: tuple[tuple[str, dict], ...] = (
    ("zero-shot", {"steps": 0, "region": "none", "w_distill": 0.0}),
    ("vanilla FT", {"region": "none", "w_distill": 0.0}),
    ("FT + FD (clean)", {"region": "none", "w_distill": 1.0}),
    ("FT + FD (object mask, single fill)", {"region": "object", "refill": "single", "mask_threshold": 0.3, "w_distill": 1.0}),
)


def cmd_baselines(args: argparse.Namespace) -> int:
    import torch

    from robusttune.cli import _cache_dir, _emit, _table
    from robusttune.cli_train import _check_out_dir, _metric_columns, _set_threads, run_training
    from robusttune.config import TaskSpec, TrainConfig, default_world, parse
    from robusttune.training.checkpoint import load_checkpoint
    from robusttune.training.mini_world import prepare_world
    from robusttune.training.wise import wise_curve

    started = time.perf_counter()
    out = Path(args.out) if args.out else Path("runs") / time.strftime("baselines-%Y%m%d-%H%M%S")
    _check_out_dir(out, resume=False, overwrite=False)
    _set_threads(args.threads)
    cache = _cache_dir(args.cache_dir)
    prepared = prepare_world(default_world(), cache)
    print(f"mini world ready (tiny CLIP: {prepared.source}); fine-tuning {len(DEMO_RUNS) - 1} variants, "
          f"seed {args.seed}, {args.steps} steps each", flush=True)
    spec = TaskSpec()
    rows = []
    for name, overrides in DEMO_RUNS:
        steps = overrides.get("steps", args.steps)
        config = parse(TrainConfig, {**overrides, "steps": steps, "seed": args.seed}, f"demo run '{name}'")
        run_dir = out / name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("+", "plus")
        run_dir.mkdir(parents=True)
        summary = run_training(config, spec, run_dir, cache, echo=False)
        rows.append({"method": name, **{k: v for k, v in summary.items() if k.startswith(("id_", "ood_"))}})
        print(f"  {name}: ID {100 * summary['id_acc']:.1f}  OOD mean {100 * summary['ood_mean']:.1f}", flush=True)
        if name == "vanilla FT":
            model, task = prepared.classifier(), prepared.task()
            zero_shot = {k: v.clone() for k, v in model.state_dict().items()}
            finetuned = load_checkpoint(run_dir / "final.pt")["model"]
            (wise_row,) = wise_curve(model, zero_shot, finetuned, task.eval_sets, alphas=(0.5,))
            rows.append({"method": "WiSE-FT of vanilla FT (alpha 0.5)", **{k: v for k, v in wise_row.items() if k != "alpha"}})
    seconds = round(time.perf_counter() - started, 1)

    def human() -> None:
        print()
        print(_table(rows, ["method", *_metric_columns(rows[0])]))
        print(f"\naccuracies in %; {seconds:.0f} s on {torch.get_num_threads()} threads; runs in {out}")

    _emit({"rows": rows, "out": str(out), "seconds": seconds}, args.json, human)
    return 0


def register(commands, common) -> None:
    baselines = commands.add_parser("baselines", help="zero-shot, vanilla FT, WiSE-FT and FD reference runs on the mini world")
    common(baselines)
    baselines.add_argument("--steps", type=int, default=150, metavar="N", help="fine-tuning steps per run (default 150)")
    baselines.add_argument("--seed", type=int, default=0, metavar="S")
    baselines.add_argument("--threads", type=int, metavar="K")
    baselines.add_argument("--out", metavar="DIR", help="where runs go (default: runs/baselines-<time>)")
    baselines.set_defaults(handler=cmd_baselines)
