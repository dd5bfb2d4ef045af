"""Time ``robusttune report`` (without the gallery) on a synthetic experiment of N trials.

    python benchmarks/report_time.py [--trials 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path


def synthetic_experiment(root: Path, trials: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    experiment = root / "synthetic"
    experiment.mkdir()
    (experiment / "manifest.json").write_text(json.dumps({"space": "synthetic", "trials": trials}))
    rows = []
    for i in range(trials):
        sampled = {"region": rng.choice(["object", "context", "random", "none"]), "refill": rng.choice(["single", "multi", "none"]),
                   "mask_ratio": rng.uniform(0.1, 0.9), "w_distill": 10 ** rng.uniform(-2, 1.5), "lr": 10 ** rng.uniform(-4, -3)}
        for step in (50, 100, 150):
            ident, ood = rng.uniform(0.92, 0.96), rng.uniform(0.72, 0.86)
            rows.append({"trial_id": f"t{i:04d}", "status": "running", "step": step, "sampled": sampled, "id_acc": ident,
                         "id_val_acc": ident, "ood_background": ood, "ood_source": ood, "ood_style": ood, "ood_mean": ood,
                         "objective": (ident + ood) / 2, "time": 1000.0 + i})
        rows.append({**rows[-1], "status": rng.choice(["complete"] * 8 + ["stopped-early", "failed"]), "final": True})
    (experiment / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from robusttune.analysis.report import write_report

    with tempfile.TemporaryDirectory() as root:
        experiment = synthetic_experiment(Path(root), args.trials)
        started = time.perf_counter()
        summary = write_report(experiment)
        seconds = time.perf_counter() - started
    result = {"trials": args.trials, "seconds": round(seconds, 2), "front_size": summary.get("front_size")}
    print(f"report of {args.trials} trials in {seconds:.1f} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
