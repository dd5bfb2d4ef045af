"""Which searcher and scheduler find the ID/OOD front with the least compute? Replays on a search benchmark.

    python benchmarks/search_efficiency.py [--benchmark grid|continuous] [--seeds 20] [--out DIR] [--figure F] [--json]

Every arm searches the same benchmark through the real sweep path (Ray Tune + Optuna + scheduler + records; the
trainable looks curves up, see robusttune.bench.replay), one trial at a time. Budget unit: one evaluation interval
of one trial.

- ``--benchmark grid`` (default table ``mini_full``): every arm searches the tabulated grid for ``--horizon`` of
  the full grid's compute; the target is the whole table's hypervolume.
- ``--benchmark continuous`` (default table ``mini_continuous``): the surrogate fitted to 256 random points
  answers any configuration, with the training noise measured at repeated seeds; each search gets
  ``--trials`` full trials' worth of evaluations; the target is the surrogate's best front (its noiseless
  predictions at 4,096 random configurations). Arms: random, TPE (independent, and multivariate with groups: the
  variant Optuna recommends for conditional spaces), NSGA-II and Optuna's GP sampler, each with and without
  MO-ASHA, and BoTorch's qNEHVI (optuna-integration) with ``--botorch``. ``--warm-start`` also measures a
  warm start: a cheap low-fidelity study (``--proxy-trials`` trials of ``--proxy-evaluations`` evaluations) whose
  front (``--warm-top``) starts the default arm's search.

Hypervolume is over (ID val, OOD mean) of the trials complete by a budget (stopped-early trials never count, as in
the reports), with the benchmark's worst tabulated final point less one accuracy point as the reference. Printed
per arm, at ``--budget`` (a fraction of the search's budget): hypervolume mean and 95% Student-t interval over
seeds, its ratio to random search's mean, the mean rank over seeds (1 = best of the arms at that seed), a
one-sided Mann-Whitney U test of the default arm's hypervolumes being greater than the arm's (seeds are
independent searches: an unpaired test), and the budget each seed needed to reach 95% of the target (median).
Friedman's test over all arms' ranks is printed below the table.

The default arm is the sampler and scheduler of the built-in ``demo`` space. ``--out DIR`` keeps every replay
(``<arm>-seed<s>``): a rerun reuses the finished ones, so an interrupted comparison continues where it stopped.
``--shard K/N`` (with ``--out``) runs only every N-th replay from the K-th (K = 1..N) and stops without figures:
N processes (cores, machines sharing DIR) run a comparison side by side, and a last run without ``--shard``
reuses their replays and prints the figures.
With --json the last line is a JSON object: ``arm`` (the default), ``hv_ratio_vs_random``, ``p_value`` (default
> random), ``seeds``, and every arm's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

CHECKPOINTS = (0.1, 0.25, 0.5, 1.0)  # budgets (fractions of the search's) of the hypervolume table
GRID_ARMS = [("random", "none"), ("random", "asha"), ("tpe", "none"), ("tpe", "mo_asha"), ("nsga2", "mo_asha"),
             ("paper_grid", "none")]
# (label, sampler, its options): TPE also as the multivariate, grouped TPE Optuna recommends for conditional spaces
CONTINUOUS_SAMPLERS = [("random", "random", {}), ("tpe", "tpe", {}), ("tpe_mv", "tpe", {"multivariate": True, "group": True}),
                       ("nsga2", "nsga2", {}), ("gp", "gp", {})]
CONTINUOUS_ARMS = [(s, k) for s in CONTINUOUS_SAMPLERS for k in ("none", "mo_asha")]
BOTORCH_ARMS = [(("botorch", "botorch", {}), k) for k in ("none", "mo_asha")]
DONE = "search_efficiency.done"  # written into a replay's folder once it finished: a rerun reuses it


def demo_scheduler():
    from robusttune.space import load_space

    space, _ = load_space("demo")
    return space.sampler.name.value, space.scheduler, dict(space.sampler.options)


def replay_once(table, arm, seed, horizon, out: Path, name: str, **options):
    """One replay into ``out/name``, or the finished one already there (an unfinished one is run again)."""
    from robusttune.bench.replay import hypervolume_by_budget, table_reference
    from robusttune.bench.table import read_table

    folder = out / name
    if (folder / DONE).is_file():
        stored = read_table(table)
        reference, _ = table_reference(stored)
        curve = hypervolume_by_budget(folder, list(stored.meta["objective"]["metrics"]), reference)
        return folder, curve, json.loads((folder / DONE).read_text())
    if folder.exists():
        shutil.rmtree(folder)
    from robusttune.bench.replay import run_replay

    run = run_replay(table, arm, seed, horizon, out, name=name, **options)
    facts = {"used": run.used, "trials": run.trials, "seconds": round(run.seconds, 2)}
    (folder / DONE).write_text(json.dumps(facts))
    return folder, run.curve, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", choices=["grid", "continuous"], default="grid")
    parser.add_argument("--table", help="table file or shipped table name (default: mini_full / mini_continuous)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (default 5)")
    parser.add_argument("--budget", type=float, default=0.25, help="compare hypervolumes at this fraction of the budget")
    parser.add_argument("--horizon", type=float, default=1.0, help="grid: each search runs to this fraction of the grid")
    parser.add_argument("--trials", type=int, default=64, help="continuous: the search's budget in full trials (default 64)")
    parser.add_argument("--grace-period", type=int, help="schedulers' grace period in evaluations (default: demo.yaml's)")
    parser.add_argument("--reduction-factor", type=float, help="schedulers' reduction factor (default: demo.yaml's)")
    parser.add_argument("--arms", help="comma-separated arms to run (e.g. random,gp+mo_asha; default: all)")
    parser.add_argument("--botorch", action="store_true", help="continuous: add BoTorch's qNEHVI arms (slow on CPUs)")
    parser.add_argument("--warm-start", action="store_true", help="continuous: measure a warm start from a cheap study")
    parser.add_argument("--proxy-trials", type=int, default=32, help="trials of the low-fidelity study (default 32)")
    parser.add_argument("--proxy-evaluations", type=int, default=2, help="evaluations per proxy trial (default 2)")
    parser.add_argument("--warm-top", type=int, default=8, help="proxy trials that start the search (default 8)")
    parser.add_argument("--out", type=Path, help="keep the replays here; finished ones are reused on a rerun")
    parser.add_argument("--shard", type=shard_of, metavar="K/N",
                        help="with --out: run only the K-th of N shares of the replays, then stop (no figures)")
    parser.add_argument("--figure", type=Path, help="draw the hypervolume over budget of every arm into this PNG")
    parser.add_argument("--quick", action="store_true", help="3 seeds, a quarter of the budget: a few minutes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.shard and not args.out:
        parser.error("--shard needs --out (the folder the shards share)")
    if args.quick:
        args.seeds, args.horizon, args.trials = min(args.seeds, 3), min(args.horizon, 0.5), min(args.trials, 16)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray

    from robusttune.bench import compare
    from robusttune.bench.replay import Arm, resolve_table, table_reference
    from robusttune.bench.table import read_table

    continuous = args.benchmark == "continuous"
    path = resolve_table(args.table or ("mini_continuous" if continuous else "mini_full"))
    table = read_table(path)
    if continuous != (table.kind == "points"):
        print(f"search_efficiency: {path} is a {table.kind} table; --benchmark {args.benchmark} needs a "
              f"{'points' if continuous else 'grid'} table", file=sys.stderr)
        return 2
    reference, table_hv = table_reference(table)
    if continuous:
        from robusttune.bench.surrogate import Surrogate

        surrogate = Surrogate(table)
        target_hv = surrogate.front_hypervolume(reference)
        horizon = args.trials * table.evaluations
        scale = f"{args.trials} full trials ({horizon} evaluations)"
    else:
        target_hv = table_hv
        full_grid = len(table.curves) * table.evaluations
        horizon = round(args.horizon * full_grid)
        scale = f"{args.horizon:.0%} of the full grid's {full_grid} evaluations"
    budget = round(args.budget * horizon)
    demo_sampler, demo_config, demo_options = demo_scheduler()
    grace = args.grace_period or demo_config.grace_period
    eta = args.reduction_factor or demo_config.reduction_factor
    label = next((label for label, sampler, options in CONTINUOUS_SAMPLERS if (sampler, options) == (demo_sampler, demo_options)),
                 demo_sampler)
    default = Arm.of(demo_sampler, demo_config.name, grace_period=grace, reduction_factor=eta, options=demo_options,
                     label=label)
    if continuous:
        arms = [Arm.of(sampler, k, grace_period=grace, reduction_factor=eta, options=options, label=label)
                for (label, sampler, options), k in CONTINUOUS_ARMS + (BOTORCH_ARMS if args.botorch else [])]
    else:
        arms = [Arm.of(s, k, grace_period=grace, reduction_factor=eta) for s, k in GRID_ARMS]
    if default.name not in {a.name for a in arms}:
        arms.append(default)
    if args.arms:
        wanted = {a.strip() for a in args.arms.split(",") if a.strip()} | {default.name, "random"}
        arms = [a for a in arms if a.name in wanted]
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)  # startup not counted
    out = args.out or Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list] = {}
    facts: dict[str, list] = {}
    started = time.perf_counter()
    if args.shard:
        mine = shard_filter(*args.shard)
        pairs = [(arm, seed) for arm in arms for seed in range(args.seeds)]
        ran = [replay_once(path, arm, seed, horizon, out, f"{arm.name}-seed{seed}")
               for i, (arm, seed) in enumerate(pairs) if mine(i)]
        if continuous and args.warm_start:
            for seed in filter(mine, range(args.seeds)):
                warm_replays(args, path, default, horizon, out, seed)
        warm = " and its seeds' warm starts" if continuous and args.warm_start else ""
        print(f"shard {args.shard[0]}/{args.shard[1]}: {len(ran)} of {len(pairs)} searches{warm} in {out}; run again "
              f"without --shard for the figures", flush=True)
        return 0
    for arm in arms:
        runs = [replay_once(path, arm, seed, horizon, out, f"{arm.name}-seed{seed}") for seed in range(args.seeds)]
        curves[arm.name] = [curve for _, curve, _ in runs]
        facts[arm.name] = [fact for _, _, fact in runs]
        print(f"  {arm.name}: {args.seeds} searches ({sum(f['seconds'] for f in facts[arm.name]):.0f} s of replay)",
              file=sys.stderr, flush=True)
    warm = measure_warm_start(args, path, default, horizon, out, target_hv, curves[default.name]) if continuous and args.warm_start else None
    seconds = time.perf_counter() - started

    target = 0.95 * target_hv
    figures = {name: compare.arm_figures(name, arm_curves, budget, target) for name, arm_curves in curves.items()}
    random_mean = figures["random"].hv_mean
    ranks = compare.mean_ranks({name: f.hv_by_seed for name, f in figures.items()})
    friedman = compare.friedman_p({name: f.hv_by_seed for name, f in figures.items()})
    rows = []
    for name, f in figures.items():
        rows.append({**f.to_dict(), "hv_ratio_vs_random": f.hv_mean / random_mean if random_mean else None,
                     "mean_rank": ranks[name],
                     "p_default_greater": None if name == default.name else
                     compare.mann_whitney_greater(figures[default.name].hv_by_seed, f.hv_by_seed),
                     "budget_fraction_to_95pct": None if f.budget_to_target_median is None else f.budget_to_target_median / horizon,
                     "hv_fraction_of_target_at": {str(b): compare.hypervolume_at_mean(curves[name], round(b * horizon)) / target_hv
                                                  for b in CHECKPOINTS},
                     "trials_mean": sum(x["trials"] for x in facts[name]) / len(facts[name]),
                     "replay_seconds": round(sum(x["seconds"] for x in facts[name]), 1)})

    kind = "surrogate's best front" if continuous else "table's"
    # a points table knows its trials' summed seconds (resumes included); a grid table, its last process's wall time
    trial_seconds = table.meta.get("trial_seconds")
    cost = f"{trial_seconds / 3600:.1f} trial-hours" if trial_seconds else f"{table.meta.get('tabulate_seconds')} s"
    print(f"benchmark {path.name} ({table.kind}): {len(table.curves)} points x {table.evaluations} evaluations; "
          f"tabulated in {cost}; target: 95% of the {kind} hypervolume {target_hv:.6f}")
    if continuous:
        print(f"surrogate (held-out, grouped 5-fold): " + "; ".join(
            f"{m} R^2 {q['r2']:.3f} (last evaluation {q['r2_final']:.3f}), Spearman {q['spearman']:.3f} "
            f"({q['spearman_final']:.3f})" for m, q in surrogate.quality.items() if m in ("id_val_acc", "ood_mean")))
        print(f"noise (sd over seeds at the last evaluation, {surrogate.noise.points} points): " + ", ".join(
            f"{m} {100 * sd[-1]:.2f} points (correlation {surrogate.noise.correlation[m]:.2f})"
            for m, sd in surrogate.noise.sd.items()))
    print(f"search budget: {scale}; schedulers: grace period {grace}, reduction factor {eta:g} (evaluations)")
    print(f"hypervolume at {args.budget:.0%} of the budget ({budget} evaluations), {args.seeds} seeds:")
    print(f"{'arm':<16}{'HV mean':>10}{'95% interval':>22}{'x random':>10}{'rank':>7}{'p (default >)':>15}"
          f"{'to 95% (median)':>17}{'trials':>8}")
    for row in rows:
        marker = " (default)" if row["arm"] == default.name else ""
        to95 = "-" if row["budget_fraction_to_95pct"] is None else f"{row['budget_fraction_to_95pct']:.0%}"
        p = "" if row["p_default_greater"] is None else f"{row['p_default_greater']:.3f}"
        interval = f"[{row['hv_low']:.6f}, {row['hv_high']:.6f}]"
        print(f"{row['arm']:<16}{row['hv_mean']:>10.6f}{interval:>22}"
              f"{row['hv_ratio_vs_random']:>10.3f}{row['mean_rank']:>7.2f}{p:>15}{to95:>17}{row['trials_mean']:>8.0f}{marker}")
    print(f"Friedman test over the arms' ranks: p = {friedman:.3g}" if friedman is not None else "")
    print(f"\nhypervolume / the {kind}, mean over seeds, at a budget of (fraction of the search's):")
    print(f"{'arm':<16}" + "".join(f"{b:>8.0%}" for b in CHECKPOINTS))
    for row in rows:
        print(f"{row['arm']:<16}" + "".join(f"{row['hv_fraction_of_target_at'][str(b)]:>8.3f}" for b in CHECKPOINTS))
    if warm:
        print(f"\nwarm start ({warm['proxy_trials']} proxy trials of {warm['proxy_evaluations']} evaluations, its top "
              f"{warm['top']} first): compute to reach 95% of the target, median over seeds: warm {warm['warm_median']} "
              f"(proxy included) vs cold {warm['cold_median']} evaluations; one-sided Mann-Whitney U p = {warm['p_warm_less']:.3f}")
    print(f"{sum(len(c) for c in curves.values())} replayed searches in {seconds:.0f} s; replays kept in {out}")
    if args.figure:
        draw(args.figure, curves, horizon, target_hv, default.name, path.name)
        print(f"figure: {args.figure}")
    chosen = next(row for row in rows if row["arm"] == default.name)
    if args.json:
        print(json.dumps({"arm": default.name, "benchmark": args.benchmark,
                          "hv_ratio_vs_random": chosen["hv_ratio_vs_random"],
                          "p_value": compare.mann_whitney_greater(chosen["hv_by_seed"], figures["random"].hv_by_seed),
                          "test": "one-sided Mann-Whitney U (default > random), unpaired over seeds",
                          "seeds": args.seeds, "budget_fraction": args.budget, "budget_evaluations": budget,
                          "horizon_evaluations": horizon, "target_hypervolume": target_hv,
                          "budget_fraction_to_95pct": chosen["budget_fraction_to_95pct"], "friedman_p": friedman,
                          "grace_period": grace, "reduction_factor": eta, "table": str(path),
                          "surrogate_quality": surrogate.quality if continuous else None,
                          "noise": surrogate.noise.to_dict() if continuous else None, "warm_start": warm,
                          "replay_seconds": round(seconds, 1), "arms": rows}))
    return 0


def shard_of(text: str) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N) as (K, N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes K/N, e.g. 1/2, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def shard_filter(k: int, n: int):
    """Whether the i-th replay of a comparison is shard ``k``'s of ``n`` (every n-th, from the k-th)."""
    return lambda i: i % n == k - 1


def warm_replays(args, path, default, horizon, out: Path, seed: int):
    """A seed's low-fidelity study (random sampling, short trials) and the default arm's search started from its
    ``--warm-top`` best: (the study's facts, the search's curve)."""
    from robusttune.bench.replay import Arm
    from robusttune.experiment import load_frozen_space
    from robusttune.search.warm_start import load_warm_start

    proxy, _, proxy_facts = replay_once(path, Arm.of("random", "none"), 1000 + seed, args.proxy_trials * args.proxy_evaluations,
                                        out, f"proxy-seed{seed}", fidelity=args.proxy_evaluations)
    warm = load_warm_start(proxy, load_frozen_space(proxy)[0], top=args.warm_top)
    _, curve, _ = replay_once(path, default, seed, horizon, out, f"warm-{default.name}-seed{seed}", warm_start=warm)
    return proxy_facts, curve


def measure_warm_start(args, path, default, horizon, out: Path, target_hv: float, cold_curves) -> dict:
    """Per seed: the compute a warm-started search needs to reach 95% of the target, its low-fidelity study
    included (``warm_replays``), against the cold search's."""
    from robusttune.bench import compare

    proxy_budget = args.proxy_trials * args.proxy_evaluations
    warm_totals, cold_totals = [], []
    for seed in range(args.seeds):
        proxy_facts, curve = warm_replays(args, path, default, horizon, out, seed)
        reached = compare.budget_to_reach(curve, 0.95 * target_hv)
        warm_totals.append(float("inf") if reached is None else proxy_facts["used"] + reached)
        cold = compare.budget_to_reach(cold_curves[seed], 0.95 * target_hv)
        cold_totals.append(float("inf") if cold is None else cold)
    import statistics

    def median(values):
        value = statistics.median(values)
        return None if value == float("inf") else value

    finite = [v if v != float("inf") else 10 * horizon for v in warm_totals]
    finite_cold = [v if v != float("inf") else 10 * horizon for v in cold_totals]
    return {"proxy_trials": args.proxy_trials, "proxy_evaluations": args.proxy_evaluations, "top": args.warm_top,
            "proxy_budget": proxy_budget, "warm_by_seed": warm_totals, "cold_by_seed": cold_totals,
            "warm_median": median(warm_totals), "cold_median": median(cold_totals),
            "p_warm_less": compare.mann_whitney_greater(finite_cold, finite)}


def draw(target: Path, curves: dict, horizon: int, target_hv: float, default: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robusttune.bench import compare

    budgets = list(range(0, horizon + 1, max(1, horizon // 60)))
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, arm_curves in curves.items():
        band = compare.hypervolume_over_budget(arm_curves, budgets)
        x = [b / horizon for b in budgets]
        line, = axes.plot(x, [m / target_hv for m, _, _ in band], label=name, lw=2.5 if name == default else 1.2)
        axes.fill_between(x, [lo / target_hv for _, lo, _ in band], [hi / target_hv for _, _, hi in band],
                          color=line.get_color(), alpha=0.12)
    axes.axhline(0.95, color="grey", ls="--", lw=0.8)
    axes.set_xlabel("budget (fraction of the search's evaluations)")
    axes.set_ylabel("hypervolume / the benchmark's best")
    axes.set_title(f"{title}: mean and 95% interval over seeds")
    axes.legend(fontsize=8, ncol=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120, bbox_inches="tight")
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
