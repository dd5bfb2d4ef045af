"""Records and inputs a person or another tool wrote: every reader skips and counts rows of the wrong shape, a row
for a trial the sweep never started is ignored, bounds hold, and every bad input is one line naming its source."""

import json
import logging
import warnings
from pathlib import Path

import pytest
from helpers import assert_one_line_exit_2, invoke

from robusttune.experiment import (append_record, latest_by_trial, load_records, started_trials, trial_files,
                                   write_manifest)
from robusttune.space import load_space

FORGED = [
    {"trial_id": "zz", "sampled": "oops", "status": "complete", "id_acc": "abc"},
    {"trial_id": None},
    {"trial_id": ""},
    {"trial_id": "t9", "status": "complete", "final": "yes"},
    {"trial_id": "t9", "step": [1], "evaluation": 1},
    {"trial_id": "t9", "config": "x"},
    {"kind": "wise", "alpha": "x", "source": "vanilla-ft"},
    {"kind": "merge", "method": 3, "members": ["t1"]},
    {"kind": "merge", "method": "soup", "members": "t1"},
    {"kind": "confirm", "seed": 0},
    {"no": "kind"},
    [1, 2],
    "text",
]


@pytest.fixture()
def experiment(tmp_path) -> Path:
    space, text = load_space("demo")
    path = tmp_path / "runs" / "exp"
    path.mkdir(parents=True)
    write_manifest(path, space, text, seed=0, trials=2, concurrency=1, runner={"kind": "train"})
    for i, (ident, ood) in enumerate([(0.9, 0.7), (0.8, 0.8)], start=1):
        append_record(path, {"trial_id": f"t{i}", "status": "complete", "step": 150, "evaluation": 6, "final": True,
                             "sampled": {"region": "object"}, "id_acc": ident, "id_val_acc": ident, "ood_mean": ood,
                             "objective": ood})
    return path


def forge(experiment: Path) -> None:
    with open(experiment / "records.jsonl", "a") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in FORGED)


def test_rows_of_the_wrong_shape_are_skipped_and_counted(experiment, caplog):
    forge(experiment)
    with caplog.at_level(logging.WARNING):
        records = load_records(experiment)
        load_records(experiment)  # read again: warned once
    assert [r["trial_id"] for r in records.rows] == ["t1", "t2"] and records.skipped == len(FORGED)
    said = [r.message for r in caplog.records if "wrongly shaped" in r.message]
    assert len(said) == 1 and f"skipped {len(FORGED)}" in said[0]


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["report", "--no-gallery", "--format", "csv"]])
def test_status_and_report_read_a_forged_experiment(experiment, cache_dir, command):
    forge(experiment)
    result = invoke(command[0], experiment, *command[1:], cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "zz" not in result.stdout


def test_confirm_refuses_its_bounds_before_reading_anything(experiment, cache_dir):
    forge(experiment)
    assert_one_line_exit_2(invoke("confirm", experiment, "--seeds", "1000000", cache_dir=cache_dir),
                           "--seeds must be <= 100, got 1000000")
    assert_one_line_exit_2(invoke("confirm", experiment, "--top", "101", cache_dir=cache_dir), "--top must be <= 100")


def test_wise_alphas_are_bounded(tmp_path, cache_dir):
    weights = tmp_path / "final.pt"
    weights.write_bytes(b"not read")
    many = ",".join(str(i / 10000) for i in range(10000))
    assert_one_line_exit_2(invoke("wise", weights, "--alphas", many, cache_dir=cache_dir),
                           "--alphas must be at most 101 values (steps of 0.01), got 10000")


def test_a_trial_the_sweep_never_started_is_ignored_with_a_warning(experiment, caplog):
    for trial in ("t1", "t2"):  # the trials this sweep started wrote their config before their first report
        trial_files(experiment, trial).folder.mkdir(parents=True)
        trial_files(experiment, trial).config.write_text("{}")
    append_record(experiment, {"trial_id": "forged", "status": "complete", "final": True, "step": 150,
                               "id_acc": 0.99, "ood_mean": 0.99})
    append_record(experiment, {"trial_id": "restored-only", "status": "running", "step": 25, "evaluation": 1})
    with caplog.at_level(logging.WARNING):
        kept = started_trials(experiment, latest_by_trial(experiment), {"restored-only"})
    assert sorted(kept) == ["restored-only", "t1", "t2"]
    assert any("never started: forged" in r.message for r in caplog.records)


def test_report_works_before_the_first_record(experiment, cache_dir):
    (experiment / "records.jsonl").unlink()
    result = invoke("report", experiment, "--no-gallery", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert (experiment / "report" / "index.html").is_file()


def test_report_out_problems_are_bad_input(experiment, cache_dir, tmp_path):
    existing = tmp_path / "file.txt"
    existing.write_text("keep")
    assert_one_line_exit_2(invoke("report", experiment, "--out", existing, cache_dir=cache_dir),
                           f"--out {existing} exists and is not a folder")
    assert existing.read_text() == "keep"
    assert_one_line_exit_2(invoke("report", experiment, "--out", existing / "under", cache_dir=cache_dir),
                           "--out")
    assert_one_line_exit_2(invoke("report", experiment, "--out", "/proc/no/such/place", cache_dir=cache_dir),
                           "cannot write the report there")


def test_a_figure_with_no_labels_says_nothing(experiment, tmp_path):
    """matplotlib warns 'No artists with labels found to put in legend' for a legend of nothing."""
    import pandas as pd

    from robusttune.analysis.effects import effects_png
    from robusttune.analysis.figures import pareto_png

    frame = pd.DataFrame([{"trial_id": "a", "status": "failed", "id_acc": 0.5, "ood_mean": 0.4, "param.lr": 0.1}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pareto_png(frame, tmp_path / "p.png")
        effects_png(frame, ["param.lr"], tmp_path / "e.png")


def test_flag_values_are_blamed_on_the_flag_not_the_file(tmp_path, cache_dir):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 10\n")
    assert_one_line_exit_2(invoke("train", "--config", config, "--batch-size", "0", cache_dir=cache_dir),
                           "--batch-size 0: ")
    config.write_text("batch_size: 0\n")
    assert_one_line_exit_2(invoke("train", "--config", config, cache_dir=cache_dir), f"{config}: batch_size")


def test_a_space_file_name_that_is_no_folder_name_gives_a_valid_experiment_name():
    from robusttune.api.sweeps import _plain_name
    from robusttune.experiment import check_experiment_name

    for name in ("my space", "résumé ß", "..dots", "ünï", "a/b"):
        check_experiment_name(_plain_name(name) + "-20260101-000000")
    assert _plain_name("my space v2") == "my-space-v2"
