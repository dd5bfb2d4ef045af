"""Bad luck and bad input around an experiment directory: nothing is deleted by mistake, nothing half-created is
left behind, one process at a time, edited spaces refused, torn writes survived. None of these starts Ray."""

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_exit_2, invoke, snapshot

from robusttune.errors import ConfigError
from robusttune.experiment import (ExperimentLock, append_record, check_space_unchanged, load_records, read_records,
                                   write_manifest)
from robusttune.space import load_space


@pytest.fixture()
def experiment(tmp_path) -> Path:
    """A real experiment directory (manifest, frozen space, records) as a sweep writes it, without running one."""
    space, text = load_space("demo")
    path = tmp_path / "runs" / "exp"
    path.mkdir(parents=True)
    write_manifest(path, space, text, seed=0, trials=2, concurrency=1, runner={"kind": "train"})
    append_record(path, {"trial_id": "t1", "status": "complete", "step": 150, "evaluation": 6, "final": True,
                         "id_val_acc": 0.9, "ood_mean": 0.8})
    return path


def test_overwrite_refuses_a_folder_that_is_not_an_experiment(tmp_path, cache_dir):
    precious = tmp_path / "s" / "x"
    precious.mkdir(parents=True)
    (precious / "precious.txt").write_text("keep")
    assert_one_line_exit_2(invoke("sweep", "demo", "--storage", tmp_path / "s", "--name", "x", "--overwrite", cwd=tmp_path,
                        cache_dir=cache_dir), "not a robusttune experiment")
    assert (precious / "precious.txt").read_text() == "keep"


@pytest.mark.parametrize("args, expected", [
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--max-failures", "-1"], "--max-failures must be >= 0"),
])
def test_overwrite_validates_everything_before_deleting(experiment, cache_dir, args, expected):
    before = snapshot(experiment)
    assert_one_line_exit_2(invoke("sweep", "demo", "--storage", experiment.parent, "--name", experiment.name, "--overwrite", *args,
                        cwd=experiment.parent, cache_dir=cache_dir), expected)
    assert snapshot(experiment) == before  # the experiment is intact, records and all


def test_bad_sampler_options_fail_before_the_experiment_exists(tmp_path, cache_dir):
    space = yaml.safe_load(load_space("demo")[1])
    space["sampler"] = {"name": "tpe", "seed": 0, "options": {"n_startup_trails": 3}}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(space))
    assert_one_line_exit_2(invoke("sweep", tmp_path / "typo.yaml", "--storage", tmp_path / "runs", "--name", "typo", cwd=tmp_path,
                        cache_dir=cache_dir), "sampler.options not accepted")
    assert not (tmp_path / "runs" / "typo").exists()


def test_an_exported_ray_address_without_address_is_refused_before_anything(tmp_path, cache_dir):
    result = invoke("sweep", "demo", "--storage", tmp_path / "runs", "--name", "r", cwd=tmp_path,
                    env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir), "RAY_ADDRESS": "10.9.8.7:6379"})
    assert_one_line_exit_2(result, "--address is not given but RAY_ADDRESS is set (10.9.8.7:6379)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../escape", "a$b", ".hidden", "with space", "semi;colon"])
def test_experiment_names_are_plain_folder_names(tmp_path, cache_dir, name):
    assert_one_line_exit_2(invoke("sweep", "demo", "--storage", tmp_path / "runs", "--name", name, cwd=tmp_path,
                        cache_dir=cache_dir), "experiment name must be a plain folder name")
    assert not (tmp_path / "runs").exists()


def test_a_second_process_is_refused_with_the_holders_name(experiment, cache_dir):
    with ExperimentLock(experiment, "robusttune resume runs/exp"):
        result = invoke("resume", experiment, cwd=experiment.parent, cache_dir=cache_dir)
        assert_one_line_exit_2(result, "in use by 'robusttune resume runs/exp' (pid")
        assert_one_line_exit_2(invoke("sweep", "demo", "--storage", experiment.parent, "--name", "exp", "--overwrite",
                            cwd=experiment.parent, cache_dir=cache_dir), "in use by")
    assert (experiment / ".lock").read_text() == ""  # released: the file stays (never unlinked), naming no holder
    with ExperimentLock(experiment, "again"):  # and free again
        pass


def test_an_edited_space_is_refused_on_resume(experiment, cache_dir):
    (experiment / "space.yaml").write_text((experiment / "space.yaml").read_text().replace("ood_mean", "ood_style"))
    assert_one_line_exit_2(invoke("resume", experiment, cwd=experiment.parent, cache_dir=cache_dir),
                    "changed since the sweep started; restore it, or pass --allow-space-change")
    check_space_unchanged(experiment, allow_change=True)  # the flag lets it through
    with pytest.raises(ConfigError):
        check_space_unchanged(experiment)


def test_a_torn_last_line_never_swallows_the_next_record(experiment):
    with open(experiment / "records.jsonl", "ab") as stream:
        stream.write(b'{"trial_id": "t2", "status": "runn')  # a crash mid-write
    append_record(experiment, {"trial_id": "t3", "status": "running", "step": 25, "evaluation": 1})
    records = load_records(experiment)
    assert [r["trial_id"] for r in records.rows] == ["t1", "t3"] and records.skipped == 1


@pytest.mark.parametrize("bad", [b"[1, 2]\n", b'"text"\n', b"\xff\xfe not utf-8\n", b'{"trial_id": 7}\n',
                                 b'{"trial_id": "t9", "step": "ten"}\n', b'{"trial_id": "t9", "status": "bogus"}\n'])
def test_readers_skip_and_count_bad_rows_and_agree(experiment, bad, tmp_path):
    from robusttune.analysis import results

    with open(experiment / "records.jsonl", "ab") as stream:
        stream.write(bad)
    append_record(experiment, {"trial_id": "t4", "status": "running", "step": 25, "evaluation": 1,
                               "id_val_acc": 0.5, "ood_mean": 0.5})
    assert load_records(experiment).skipped == 1
    assert {r["trial_id"] for r in read_records(experiment)} == {"t1", "t4"}
    assert set(results.trials(experiment)["trial_id"]) == {"t1", "t4"}  # the analysis reads the same rows
    status = invoke("status", experiment, "--json", cwd=tmp_path, cache_dir=tmp_path)
    assert status.returncode == 0 and json.loads(status.stdout.splitlines()[-1])["counts"]["complete"] == 1


def test_a_failed_report_carries_every_metric_the_searcher_and_scheduler_need():
    from robusttune.search.trainable import failure_result

    space, _ = load_space("demo")
    before_first = failure_result(space, {}, step=0, evaluation=0, failure="non-finite loss")
    assert set(space.objective.metrics) | {"objective"} <= set(before_first)
    assert all(math.isnan(before_first[m]) for m in [*space.objective.metrics, "objective"])
    assert before_first["trial_status"] == "failed"
    later = failure_result(space, {"id_val_acc": 0.9, "ood_mean": 0.7}, step=50, evaluation=2, failure="x")
    assert later["id_val_acc"] == 0.9 and math.isnan(later["objective"])


def test_report_before_the_first_record_writes_an_empty_report(experiment, tmp_path, cache_dir):
    """A running sweep that has not recorded its first evaluation yet is a robusttune experiment: its report says
    there are no trials yet (a folder without a manifest is still refused)."""
    shutil.copytree(experiment, tmp_path / "empty")
    (tmp_path / "empty" / "records.jsonl").unlink()
    result = invoke("report", tmp_path / "empty", "--no-gallery", cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "empty" / "report" / "index.html").is_file()
    (tmp_path / "empty" / "manifest.json").unlink()
    assert_one_line_exit_2(invoke("report", tmp_path / "empty", "--no-gallery", cwd=tmp_path, cache_dir=cache_dir),
                           "not a robusttune experiment")


def test_a_torn_journal_tail_is_cut_at_the_last_complete_line(tmp_path):
    from robusttune.experiment import end_torn_tail

    journal = tmp_path / "optuna.journal"
    journal.write_bytes(b'{"op": 1}\n{"op": 2}\n{"op": 3, "tor')
    assert end_torn_tail(journal) == len(b'{"op": 3, "tor') and journal.read_bytes() == b'{"op": 1}\n{"op": 2}\n'
    assert end_torn_tail(journal) == 0 and journal.read_bytes() == b'{"op": 1}\n{"op": 2}\n'  # whole lines stay
    journal.write_bytes(b"no newline at all")
    assert end_torn_tail(journal) == 17 and journal.read_bytes() == b""


def test_baselines_killed_mid_curve_finish_where_they_stopped(tmp_path, tiny_world_config, tiny_prepared, cache_dir,
                                                              monkeypatch):
    """A kill during the baselines loses at most the point being computed; the next run completes each curve and
    reuses the vanilla fine-tuning weights instead of training them again."""
    from robusttune.search import baselines
    from robusttune.training import run as run_module
    from robusttune.training import wise

    space = {"name": "b", "task": {"world": tiny_world_config.to_dict()},
             "fixed": {"steps": 4, "batch_size": 16, "eval_every": 2, "eval_batch_size": 256},
             "baselines": {"wise_alphas": [0.0, 0.5, 1.0]}}
    text = yaml.safe_dump(space)
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "space.yaml").write_text(text)
    real_curve, calls = wise.wise_curve, []

    def killed_after_two(*args, **kwargs):
        calls.append(kwargs["alphas"])
        if len(calls) > 2:
            raise KeyboardInterrupt  # the process dies mid-curve
        return real_curve(*args, **kwargs)

    monkeypatch.setattr(wise, "wise_curve", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        baselines.run_baselines(experiment, text, cache_dir, [], cpu=2, gpu=0, use_ray=False)
    rows = list(read_records(experiment))
    assert [r["method"] for r in rows if r.get("kind") == "baseline"] == ["zero-shot", "vanilla-ft"]
    assert sorted(r["alpha"] for r in rows if r.get("kind") == "wise") == [0.0, 0.5]  # kept, row by row
    assert (experiment / "baselines" / "vanilla_ft.pt").is_file()

    monkeypatch.setattr(wise, "wise_curve", real_curve)
    monkeypatch.setattr(run_module, "prepare_run", lambda *a, **k: pytest.fail("vanilla FT trained twice"))
    assert baselines.run_baselines(experiment, text, cache_dir, [], cpu=2, gpu=0, use_ray=False) == 1
    rows = list(read_records(experiment))
    assert sorted(r["alpha"] for r in rows if r.get("kind") == "wise") == [0.0, 0.5, 1.0]
    at_one = next(r for r in rows if r.get("kind") == "wise" and r["alpha"] == 1.0)
    vanilla = next(r for r in rows if r.get("method") == "vanilla-ft")
    assert at_one["id_acc"] == vanilla["id_acc"]  # alpha 1 is the reused vanilla weights
    assert baselines.run_baselines(experiment, text, cache_dir, [], cpu=2, gpu=0, use_ray=False) == 0  # all done


def test_wise_bad_inputs_fail_before_any_evaluation(tiny_run, tmp_path, cache_dir, monkeypatch):
    import robusttune.training.checkpoint

    monkeypatch.setattr(robusttune.training.checkpoint, "load_checkpoint",
                        lambda *a, **k: pytest.fail("read the checkpoint before checking the arguments"))
    final = tiny_run / "final.pt"
    assert_one_line_exit_2(invoke("wise", final, "--out", tmp_path / "missing" / "curve.jsonl", cwd=tmp_path, cache_dir=cache_dir),
                    "must be a file in an existing folder")
    assert_one_line_exit_2(invoke("wise", final, "--out", tmp_path, cwd=tmp_path, cache_dir=cache_dir),
                    "must be a file in an existing folder")
    assert_one_line_exit_2(invoke("wise", final, "--alphas", "0.5,2", cwd=tmp_path, cache_dir=cache_dir), "--alphas must be values in [0, 1]")
    monkeypatch.undo()
    assert_one_line_exit_2(invoke("wise", tiny_run / "checkpoint.pt", cwd=tmp_path, cache_dir=cache_dir),
                    "not a final checkpoint of 'robusttune train'")
    assert list(tmp_path.iterdir()) == []


def test_wise_with_a_zero_shot_head_of_another_class_count_is_refused(tiny_run, tmp_path, cache_dir):
    import torch

    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(tiny_run / "final.pt")
    model = dict(payload["model"])
    model["head.weight"], model["head.bias"] = torch.zeros(7, model["head.weight"].shape[1]), torch.zeros(7)
    save_checkpoint(tmp_path / "other.pt", {"model": model})
    assert_one_line_exit_2(invoke("wise", tiny_run / "final.pt", "--zero-shot", tmp_path / "other.pt", cwd=tmp_path,
                        cache_dir=cache_dir), "differ in the shape of head.weight")


@pytest.mark.parametrize("args, expected", [
    (["status", "__FILE__"], "experiment directory not found"),
    (["resume", "__EXP__", "--max-failures", "-1"], "--max-failures must be >= 0"),
    (["report", "__EXP__", "--format", "html,pdf"], "--format must be a comma-separated subset"),
    (["world", "prepare", "--config", "__BADWORLD__"], "ood_shifts"),
])
def test_more_bad_inputs_one_line_exit_2(args, expected, experiment, tmp_path, cache_dir):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad-world.yaml").write_text("ood_shifts: [weather]\n")
    swap = {"__FILE__": str(tmp_path / "afile"), "__EXP__": str(experiment), "__BADWORLD__": str(tmp_path / "bad-world.yaml")}
    before = snapshot(experiment)
    assert_one_line_exit_2(invoke(*[swap.get(a, a) for a in args], cwd=tmp_path, cache_dir=cache_dir), expected)
    assert snapshot(experiment) == before
