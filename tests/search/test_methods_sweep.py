"""A sweep that searches the method itself (real Ray Tune, Optuna journal, MO-ASHA, records, report): every trial
trains the method it was sampled with, with that method's knobs and no other's, and the report tells them apart."""

import json

import pytest

from helpers import invoke, records, tiny_space, write_space

pytestmark = pytest.mark.slow


def test_a_sweep_over_methods_trains_each_with_its_own_knobs(tmp_path, tiny_world_config, tiny_prepared, cache_dir):
    space = tiny_space(tiny_world_config, budget={"trials": 6, "concurrency": 1},
                       parameters={"method": {"type": "categorical", "choices": ["ft", "lp_ft", "l2sp", "lipsum"]},
                                   "lp_fraction": {"type": "float", "low": 0.2, "high": 0.8, "when": {"method": ["lp_ft"]}},
                                   "strength": {"type": "float", "low": 0.01, "high": 1.0, "log": True,
                                                "when": {"method": ["l2sp"]}}},
                       baselines={"wise_alphas": [0.0, 1.0]})
    space["fixed"]["texts"] = 8  # a fixed knob of one method: only its trials take it
    bad = invoke("sweep", write_space(tmp_path / "bad.yaml", space), "--storage", tmp_path, "--name", "bad", cache_dir=cache_dir)
    assert bad.returncode == 2 and bad.stderr.strip().endswith(
        "'texts' is a knob of lipsum, not of ft, lp_ft, l2sp: search the method")
    assert not (tmp_path / "bad").exists()
    del space["fixed"]["texts"]
    result = invoke("sweep", write_space(tmp_path / "m.yaml", space), "--storage", tmp_path, "--name", "m", "--json",
                    cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    finals = [r for r in records(tmp_path / "m") if r.get("final")]
    assert len(finals) == 6 and {r["status"] for r in finals} <= {"complete", "stopped-early"}
    knobs = {"ft": set(), "lp_ft": {"lp_fraction"}, "l2sp": {"strength"}, "lipsum": {"reg_weight", "texts", "text_length"}}
    assert len({r["sampled"]["method"] for r in finals}) >= 2
    for row in finals:
        method = row["config"]["method"]
        assert method["name"] == row["sampled"]["method"] and set(method) - {"name"} == knobs[method["name"]]
        for knob in ("lp_fraction", "strength"):
            assert (knob in row["sampled"]) == (knob in method) and method.get(knob) == row["sampled"].get(knob)
    report = invoke("report", tmp_path / "m", "--json", "--cache-dir", cache_dir, cache_dir=cache_dir)
    assert report.returncode == 0, report.stderr[-2000:]
    trials = (tmp_path / "m" / "report" / "trials.csv").read_text()
    assert "param.method" in trials.splitlines()[0] and all(r["sampled"]["method"] in trials for r in finals)
    assert json.loads(report.stdout.strip().splitlines()[-1])["front_size"] >= 1
