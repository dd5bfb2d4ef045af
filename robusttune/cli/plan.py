"""``robusttune plan SPACE``: what a sweep will cost before it is launched."""

from __future__ import annotations

import argparse

from robusttune.cli.output import add_common, emit


def _hours(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.1f} s"
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def _rate(images_per_s: float | None) -> str:
    if images_per_s is None:
        return "not measured"
    return f"{images_per_s:,.0f} img/s" if images_per_s >= 10 else f"{images_per_s:.2g} img/s"


def cmd_plan(args: argparse.Namespace) -> int:
    from robusttune import api

    found = api.plan(args.space, trials=args.trials, calibrate=args.calibrate, cache_dir=args.cache_dir,
                     gpu_memory=args.gpu_memory, device_type=args.device_type, cluster=args.cluster)
    calibration = found.calibration

    def human() -> None:
        source = "measured now" if calibration["measured"] else "cached; --calibrate measures again"
        timing = ("at the trials' own micro-batches" if calibration["batch_timing"] == "trial micro-batch"
                  else "fit a + b*batch on two smaller micro-batches where the trial's was too slow or too large")
        ranks = f" of {found.ranks} data-parallel processes each" if found.ranks > 1 else ""
        print(f"space '{found.space}': {found.trials} trials{ranks}, {found.concurrency} at a time, on "
              f"{calibration['device']} with {calibration['threads']} thread(s) (calibration {source}; step times {timing})")
        if found.sizes.get("source") not in (None, "the folders", "the mini world"):
            print(f"image counts: {found.sizes['source']}")
        print(f"per trial: {found.steps_per_trial} steps, {found.evaluations_per_trial} evaluations "
              f"({found.eval_images_per_trial} images), {_hours(found.trial_hours)} of which {100 * found.eval_share:.0f}% "
              f"evaluating, plus {_hours(found.trial_checkpoint_hours)} writing checkpoints; "
              f"{found.storage_bytes_per_trial / 2**20:.0f} MiB of checkpoints kept")
        loader = found.loader
        workers = f"{loader['num_workers']} worker(s)" if loader.get("num_workers") else "in the trial's process"
        if loader.get("status") == "measured":
            rate = f"{loader.get('source')}, {workers}: {_rate(loader.get('images_per_s'))}"
        else:
            rate = f"{loader.get('status')} ({workers})"
        bound = "bound: not known" if found.bound is None else f"bound by the {found.bound}"
        print(f"loader: {rate}; the device takes {_rate(loader.get('device_images_per_s'))}: {bound}")
        for name, share in found.methods.items():
            step = found.method_steps[name]
            print(f"  {name:<34} {100 * share:5.1f}% of trials  {step['step_seconds']:.3f} s/step"
                  f"{'' if step['bound'] != 'loader' else ' (loader-bound)'}")
        tail = found.tail
        print(f"tail after the trials: {_hours(tail['hours'])} (zero-shot evaluation, vanilla FT "
              f"{tail['vanilla_steps']} steps, WiSE-FT {tail['wise_alphas']} x (1 + {tail['expected_front']:.1f} "
              f"expected front) = {tail['wise_evaluations']:.0f} full evaluations)")
        confirm = found.confirmation
        if confirm.get("runs"):
            merges = f" + {confirm['merges']} merge(s) and their members" if confirm.get("merges") else ""
            print(f"confirmation: {confirm['seeds']} seeds x ({confirm['top']:.0f} configurations + vanilla FT) + zero-shot{merges} = "
                  f"{confirm['runs']:.0f} runs, {confirm['trained_runs']:.0f} trained again, {_hours(confirm['seconds'] / 3600)} "
                  f"({_hours(confirm['wall_seconds'] / 3600)} wall)")
        write = found.checkpoints["write"]
        print(f"checkpoints: {found.checkpoints['bytes_per_evaluation'] / 2**20:.0f} MiB per evaluation at "
              f"{write['bytes_per_s'] / 2**20:.0f} MiB/s (measured in {write['path']})")
        terms = ", ".join(f"{name} {_hours(hours)}" for name, hours in found.terms.items())
        print(f"sweep: {_hours(found.sweep_hours)} device time ({100 * found.scheduler_saving:.0f}% saved by the "
              f"scheduler), {_hours(found.wall_hours)} wall at this concurrency, "
              f"{found.storage_bytes / 2**30:.2f} GiB of storage at most")
        print(f"terms: {terms}; dominant: {found.dominant}")
        memory_lines(found.memory)

    emit({**found.to_dict()}, args.json, human)
    return 0


def _gb(value: float) -> str:
    return f"{value / 1e9:.1f} GB"


def memory_lines(memory: dict) -> None:
    """The memory model's table: each method's and baseline's peak next to the GPU's memory."""
    if not memory:
        return
    budget = memory.get("gpu_memory")
    against = (f"against {memory['gpu']}: {_gb(budget)}, {_gb(budget * memory['usable_fraction'] - memory['context_bytes'])}"
               f" usable after the CUDA context and fragmentation" if budget else "no GPU memory known (--gpu-memory GB, "
               "--device-type, --cluster FILE)")
    print(f"peak device memory per process ({memory['dtype']} activations; {against}):")
    for row in memory["rows"]:
        if not row["modelled"]:
            print(f"  {row['method']:<34} {row['note']}")
            continue
        parts = row["parts"]
        states = parts["weights"] + parts["teacher"] + parts["grads"] + parts["moments"]
        cam = f" + CAM maps {_gb(parts['cam_maps'])}" if parts["cam_maps"] else ""
        verdict = "" if not budget else ("  fits" if not row["note"] else "  DOES NOT FIT")
        print(f"  {row['method']:<34} {_gb(row['peak']):>9} at micro-batch {row['micro_batch']}: weights+teacher+grads"
              f"+AdamW {_gb(states)}, activations {_gb(parts['activations'])} "
              f"({row['activations_per_image'] / 2**20:.1f} MiB/image){cam}{verdict}")


def register(commands) -> None:
    plan = commands.add_parser("plan", help="estimate a sweep's device-hours, evaluation share, storage and scheduler saving")
    add_common(plan)
    plan.add_argument("space", metavar="SPACE", help="built-in space name or a YAML file")
    plan.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the space's budget)")
    plan.add_argument("--calibrate", action="store_true",
                      help="measure the step, evaluation, loader and write costs again on this machine")
    plan.add_argument("--gpu-memory", type=float, metavar="GB",
                      help="the trials' GPU memory: each method's and baseline's peak is checked against it")
    plan.add_argument("--device-type", metavar="NAME", help="the trials' GPU by name (H100, H200, A100-40GB, A100-80GB, "
                      "L40S, A10G, L4): its memory")
    plan.add_argument("--cluster", metavar="FILE", help="a Ray cluster file: the smallest GPU of its node types")
    plan.set_defaults(handler=cmd_plan)
