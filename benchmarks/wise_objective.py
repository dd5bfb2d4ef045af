"""Does scoring each trial by its own WiSE-FT curve find better curves than scoring its raw weights?

    python benchmarks/wise_objective.py [--seeds 3] [--trials N] [--out DIR] [--reuse DIR] [--alphas 0.3,0.5,0.7] [--json]

Two arms search the built-in ``demo`` space (its sampler, MO-ASHA, 16 trials of up to 150 steps, one at a time)
with sweep seeds 0..K-1 (``--trials``: another budget), its confirmation stage left out:

- ``plain``: the demo's objective, (id_val_acc, ood_mean) of each trial's weights;
- ``wise``: the same space with ``objective.wise: {alphas: ...}``: each evaluation also evaluates those
  interpolations, and the searcher, MO-ASHA and the front see the best point of the trial's curve.

Both arms train the same trials' budget (the same trials, steps and scheduler); the ``wise`` arm pays one more
evaluation per alpha at every evaluation, so its wall time is printed too. Each sweep then runs its baselines,
which evaluate the WiSE-FT curve (the space's ``baselines.wise_alphas``, 0 to 1) of every trial on its own front.
The measure: the hypervolume over the ID and OOD **test** metrics (id_acc, ood_mean) of the union of those
curves, with one reference point for every sweep (the worst value of each metric over all of them, less one
accuracy point). With the same seed both arms draw the same configurations (the sampler is random), so the
difference per seed is what the objective changed: which trials MO-ASHA kept and which the front holds.

Sweeps already in ``--out`` are reused (an interrupted one is resumed), so a rerun only adds what is missing;
``--reuse DIR`` first copies finished sweeps' records from DIR (``<arm>-s<seed>/records.jsonl`` and
``<arm>-s<seed>.seconds``: all the measure reads; ``benchmarks/results/wise_objective`` holds those measured here).
With --json the last line is one JSON object with each arm's hypervolumes and the paired differences.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ARMS = ("plain", "wise")


def arm_space(arm: str, seed: int, alphas: list[float], trials: int | None, folder: Path) -> Path:
    import yaml

    from robusttune.space import load_space

    space, _ = load_space("demo")
    data = space.to_dict()
    data.pop("confirm", None)
    if trials is not None:
        data["budget"] = {**data["budget"], "trials": trials}
    if arm == "wise":
        data["objective"] = {**data["objective"], "wise": {"alphas": alphas}}
    path = folder / f"{arm}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_arm(arm: str, seed: int, alphas: list[float], trials: int | None, out: Path, cache_dir: str | None) -> float:
    """The sweep's wall time in seconds (as recorded when it was already finished). The seed is the sweep's: the
    sampler's and every trial's training seed."""
    import robusttune as rt

    name = f"{arm}-s{seed}"
    experiment, done = out / name, out / f"{name}.seconds"
    if done.is_file():
        return float(done.read_text())
    started = time.perf_counter()
    if experiment.is_dir():
        rt.resume(experiment, cache_dir=cache_dir, verbose=0)
    else:
        rt.sweep(arm_space(arm, seed, alphas, trials, out), storage=out, name=name, seed=seed, cache_dir=cache_dir, verbose=0)
    seconds = time.perf_counter() - started
    done.write_text(f"{seconds:.1f}\n")
    return seconds


def reuse(source: Path, out: Path) -> None:
    """Copy the finished sweeps' records from ``source`` into ``out`` (those ``out`` already has are kept)."""
    import shutil

    for done in sorted(source.glob("*-s*.seconds")):
        name = done.name.removesuffix(".seconds")
        records = source / name / "records.jsonl"
        if records.is_file() and not (out / done.name).exists():
            (out / name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(records, out / name / "records.jsonl")
            shutil.copy2(done, out / done.name)


def curve_points(experiment: Path) -> tuple[list[tuple[float, float]], int]:
    """The (id_acc, ood_mean) points of the WiSE-FT curves of the sweep's front trials, and how many trials."""
    from robusttune.analysis.results import baselines

    frame = baselines(experiment)
    curves = frame[(frame["kind"] == "wise") & (frame["source"] != "vanilla-ft")]
    points = [(float(x), float(y)) for x, y in zip(curves["id_acc"], curves["ood_mean"])]
    return points, int(curves["source"].nunique())


def vanilla_points(experiment: Path) -> list[tuple[float, float]]:
    from robusttune.analysis.results import baselines

    frame = baselines(experiment)
    vanilla = frame[(frame["kind"] == "wise") & (frame["source"] == "vanilla-ft")]
    return [(float(x), float(y)) for x, y in zip(vanilla["id_acc"], vanilla["ood_mean"])]


def chosen_alphas(experiment: Path) -> list[float]:
    from robusttune.experiment import latest_by_trial

    return [float(r["wise_alpha"]) for r in latest_by_trial(experiment).values()
            if r.get("status") == "complete" and "wise_alpha" in r]


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of paired differences (NaN bounds with fewer than two)."""
    from scipy import stats

    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="sweep seeds per arm (default 3)")
    parser.add_argument("--trials", type=int, help="trials per sweep (default: the demo's 16)")
    parser.add_argument("--alphas", default="0.3,0.5,0.7", help="the wise arm's alphas (default 0.3,0.5,0.7)")
    parser.add_argument("--out", default="runs/wise-objective", help="where the sweeps go (reused when rerun)")
    parser.add_argument("--reuse", help="copy finished sweeps' records from this folder first")
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.seeds < 1 or (args.trials is not None and args.trials < 1):
        parser.error("--seeds and --trials must be >= 1")
    alphas = [float(a) for a in args.alphas.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        reuse(Path(args.reuse), out)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    from robusttune.pareto import hypervolume_2d

    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            print(f"{arm} seed {seed} ...", file=sys.stderr, flush=True)
            seconds[arm].append(run_arm(arm, seed, alphas, args.trials, out, args.cache_dir))
    points = {(arm, seed): curve_points(out / f"{arm}-s{seed}") for arm in ARMS for seed in range(args.seeds)}
    every = [p for ps, _ in points.values() for p in ps]
    reference = (min(x for x, _ in every) - 0.01, min(y for _, y in every) - 0.01)
    hv = {key: hypervolume_2d(ps, reference) for key, (ps, _) in points.items()}
    vanilla_hv = statistics.fmean(hypervolume_2d(vanilla_points(out / f"plain-s{s}"), reference)
                                  for s in range(args.seeds))
    differences = [hv[("wise", s)] - hv[("plain", s)] for s in range(args.seeds)]
    mean, low, high = paired_interval(differences)
    arms = {arm: {"hv_by_seed": [hv[(arm, s)] for s in range(args.seeds)],
                  "hv_mean": statistics.fmean(hv[(arm, s)] for s in range(args.seeds)),
                  "front_trials_by_seed": [points[(arm, s)][1] for s in range(args.seeds)],
                  "sweep_seconds_by_seed": [round(t, 1) for t in seconds[arm]]} for arm in ARMS}
    alphas_chosen = [a for s in range(args.seeds) for a in chosen_alphas(out / f"wise-s{s}")]
    arms["wise"]["alpha_counts"] = {str(a): alphas_chosen.count(a) for a in sorted(set(alphas_chosen))}
    print(f"hypervolume of the union of the front trials' WiSE-FT curves on (id_acc, ood_mean), reference "
          f"({reference[0]:.3f}, {reference[1]:.3f}); vanilla FT's own curve: {vanilla_hv:.5f}")
    print(f"{'arm':6} {'mean':>8}  by seed")
    for arm in ARMS:
        print(f"{arm:6} {arms[arm]['hv_mean']:8.5f}  " + "  ".join(f"{v:.5f}" for v in arms[arm]["hv_by_seed"])
              + f"   front trials {arms[arm]['front_trials_by_seed']}, sweep s {arms[arm]['sweep_seconds_by_seed']}")
    print(f"wise - plain, paired by seed: {mean:+.5f} (95% t interval [{low:+.5f}, {high:+.5f}], {args.seeds} seeds); "
          f"the wise arm's best points' alphas: {arms['wise']['alpha_counts']}")
    if args.json:
        print(json.dumps({"seeds": args.seeds, "trials": args.trials, "alphas": alphas, "reference": reference, "vanilla_hv": vanilla_hv,
                          "arms": arms, "difference_mean": mean, "difference_interval": [low, high],
                          "differences": differences}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
