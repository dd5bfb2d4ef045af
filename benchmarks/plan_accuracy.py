"""How close `robusttune plan` comes to a measured sweep on this machine.

Plans a space (``--calibrate``: measured afresh), then sweeps it with every trial run to its end (no scheduler, so
each trial is the full-length trial the plan describes) and compares, per trial, the plan's time for that trial's own
method (startup, training, evaluations, checkpoint writes) with the trial's measured ``time_total_s``, and the plan's
wall time with the sweep's (trials one at a time, then the baselines' tail).

    python benchmarks/plan_accuracy.py [--space demo] [--trials 6] [--json]

Prints one line per trial, then one JSON line: ``ratios`` (predicted / measured per trial), ``max_error`` (the
largest |ratio - 1|), ``total_ratio`` (the trials' sum), ``wall_ratio`` and ``tail`` (predicted and measured
seconds of the serial tail: the sweep's wall time less its trials').
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def robusttune(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "robusttune.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"robusttune {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="demo")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args()

    from robusttune.experiment import read_records
    from robusttune.search.plan import method_key
    from robusttune.space import load_space

    _, source = load_space(args.space)
    with tempfile.TemporaryDirectory() as tmp:
        text = yaml.safe_load(source)
        text.update(scheduler={"name": "none"}, budget={**text["budget"], "trials": args.trials, "concurrency": 1})
        spec = Path(tmp) / "space.yaml"
        spec.write_text(yaml.safe_dump(text))
        env = {**os.environ}
        plan = json.loads(robusttune("plan", str(spec), "--trials", str(args.trials), "--calibrate", "--json", env=env))
        started = time.perf_counter()
        robusttune("sweep", str(spec), "--storage", tmp, "--name", "sweep", "--json", env=env)
        wall = time.perf_counter() - started

        steps = plan["steps_per_trial"]
        per_method = {name: row["step_seconds"] for name, row in plan["method_steps"].items()}
        mixed_train = steps * sum(share * per_method[name] for name, share in plan["methods"].items())
        fixed = (plan["trial_hours"] + plan["trial_checkpoint_hours"]) * 3600 - mixed_train  # all but the steps
        parsed, _ = load_space(str(spec))
        rows = []
        for row in read_records(Path(tmp) / "sweep"):
            if not row.get("final") or "trial_id" not in row:
                continue
            sampled = {k: v for k, v in row["sampled"].items() if k in parsed.parameters}
            method = method_key(parsed.trial_config(sampled, seed=int(row["sampled"].get("seed", 0))))
            predicted = fixed + steps * per_method[method]
            rows.append({"trial": row["trial_id"], "method": method, "predicted_s": predicted,
                         "measured_s": row["time_total_s"], "ratio": predicted / row["time_total_s"]})
    measured_trials = sum(r["measured_s"] for r in rows)
    predicted_wall = plan["wall_hours"] * 3600
    tail_predicted = plan["tail"]["hours"] * 3600
    result = {"space": args.space, "trials": len(rows), "ratios": [round(r["ratio"], 3) for r in rows],
              "max_error": max(abs(r["ratio"] - 1) for r in rows),
              "total_ratio": sum(r["predicted_s"] for r in rows) / measured_trials,
              "wall_ratio": predicted_wall / wall, "wall_s": wall, "predicted_wall_s": predicted_wall,
              "tail": {"predicted_s": tail_predicted, "measured_s": wall - measured_trials},
              "dominant": plan["dominant"], "bound": plan["bound"]}
    if not args.json:
        for r in rows:
            print(f"trial {r['trial']}  {r['method']:<32} predicted {r['predicted_s']:6.1f} s  "
                  f"measured {r['measured_s']:6.1f} s  ratio {r['ratio']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
