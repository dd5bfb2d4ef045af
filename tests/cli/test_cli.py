"""The command line as users run it: real processes, exit codes, one-line errors, --json output."""

import json

import pytest
import yaml
from helpers import invoke, run_cli as cli

SUBCOMMANDS = [["world"], ["world", "prepare"], ["world", "pretrain"], ["train"], ["wise"], ["demo"]]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command):
    result = cli(*command, "--help")
    assert result.returncode == 0 and "usage: robusttune" in result.stdout


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory, tiny_world_config):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump({"world": tiny_world_config.to_dict(), "steps": 4, "batch_size": 16,
                                    "eval_batch_size": 128, "lr": 1e-3}))
    return path


def bad_inputs(tmp_path, config):
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1,\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("mask_ratoi: 0.3\n")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"junk")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("precious")
    return [
        (["frobnicate"], "invalid choice"),
        (["train", "--region", "everywhere"], "invalid choice"),
        (["train", "--steps", "many"], "invalid int value"),
        (["train", "--threshold", "0.3", "--ratio", "0.2"], "not allowed with argument"),
        (["train", "--config", broken], "not valid YAML"),
        (["train", "--config", typo], "unknown key 'mask_ratoi' (did you mean 'method.mask_ratio'?)"),
        (["train", "--config", tmp_path / "nope.yaml"], "config file not found"),
        (["train", "--config", config, "--lr", "-1"], "--lr -1.0: Input should be greater than 0"),
        (["train", "--config", config, "--region", "none", "--refill", "multi"], "refill needs a masking region"),
        (["train", "--config", config, "--out", full], "is not empty (pass --resume to continue it or --overwrite to replace it)"),
        (["wise", corrupt], "corrupt or not a weights-only checkpoint"),
        (["wise", tmp_path / "missing.pt"], "checkpoint not found"),
        (["world", "prepare", "--config", typo], "unknown key 'mask_ratoi'"),
    ]


def test_bad_inputs_give_one_line_exit_2_and_touch_nothing(tmp_path, tiny_config_file, cache_dir):
    for args, expected in bad_inputs(tmp_path, tiny_config_file):
        result = invoke(*args, cwd=tmp_path, env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir)})
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "runs").exists()


def test_world_prepare_json_reports_zero_shot(cache_dir, tiny_prepared, tiny_world_config, tmp_path):
    config = tmp_path / "world.yaml"
    config.write_text(yaml.safe_dump(tiny_world_config.to_dict()))
    result = invoke("world", "prepare", "--config", config, "--json", env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["zero_shot"] == pytest.approx(tiny_prepared.zero_shot)
    assert {"id_acc", "id_val_acc", "ood_background", "ood_source", "ood_style", "ood_mean"} <= set(payload["zero_shot"])
    assert payload["seconds"] < 5


def test_train_then_wise_then_resume(cache_dir, tiny_config_file, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--config", tiny_config_file, "--region", "object", "--refill", "single", "--ratio", "0.3",
                 "--w-distill", "2", "--out", out, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["status"] == "complete" and 0 <= final["id_acc"] <= 1 and "ood_mean" in final
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["id_acc"] == final["id_acc"]
    assert (out / "final.pt").is_file() and (out / "checkpoint.pt").is_file()

    here = {"ROBUSTTUNE_CACHE_DIR": str(cache_dir)}  # the train above ran as a real process; these run in this one
    wise = invoke("wise", out / "final.pt", "--alphas", "0,0.5,1", "--json", env=here)
    assert wise.returncode == 0, wise.stderr
    curve = json.loads(wise.stdout.strip().splitlines()[-1])["rows"]
    assert [r["alpha"] for r in curve] == [0.0, 0.5, 1.0]
    assert curve[-1]["id_acc"] == pytest.approx(final["id_acc"])

    again = invoke("train", "--config", tiny_config_file, "--region", "object", "--refill", "single", "--ratio", "0.3",
                   "--w-distill", "2", "--out", out, "--resume", "--json", env=here)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["id_acc"] == final["id_acc"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(rows)  # nothing re-run, nothing lost


def test_failed_training_exits_1_and_keeps_its_records(cache_dir, tiny_config_file, tmp_path, faults):
    result = cli("train", "--config", tiny_config_file, "--out", tmp_path / "nan", cache_dir=cache_dir,
                 env=faults.nan_loss((2, None)))
    assert result.returncode == 1 and "non-finite loss" in result.stderr
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "failed"
