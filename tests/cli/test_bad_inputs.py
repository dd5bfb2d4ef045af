"""The bad-input table: each case gives one line on stderr, exit code 2, no traceback, and leaves files alone.

Cases span the CLI, YAML search spaces and world configs; none of them needs Ray to start.
"""

import os
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_exit_2, invoke, snapshot

GOOD_SPACE = {
    "name": "ok",
    "task": {"world": {"name": "tiny"}},
    "parameters": {"region": {"type": "categorical", "choices": ["object", "none"]},
                   "mask_ratio": {"type": "float", "low": 0.1, "high": 0.9, "when": {"region": ["object"]}}},
    "fixed": {"steps": 4},
}


def space_with(**changes):
    space = yaml.safe_load(yaml.safe_dump(GOOD_SPACE))
    for dotted, value in changes.items():
        target = space
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        if value is DELETE:
            target.pop(leaf)
        else:
            target[leaf] = value
    return space


DELETE = object()

SPACE_CASES = [
    ("syntax error", "name: [unclosed\n", "not valid YAML"),
    ("objective metric no trial reports", space_with(**{"objective.metrics": ["id_val_acc", "ood_bakground"]}),
     "objective metric 'ood_bakground' is not reported by this task (did you mean 'ood_background'?)"),
    ("log scale with a step", space_with(**{"parameters.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                                                             "step": 1e-4}}), "a log-scale parameter takes no 'step'"),
    ("epochs searched while steps fixed", space_with(**{"parameters.epochs": {"type": "float", "low": 1, "high": 3}}),
     "a trial would not be a valid run (give steps or epochs, not both)"),
    ("more CPUs per trial than the machine", space_with(**{"resources.cpu": 4096}), "resources.cpu is 4096.0 per trial"),
    ("a GPU per trial on a machine without one", space_with(**{"resources.gpu": 1}), "resources.gpu is 1.0 per trial"),
    ("wise alpha outside [0, 1]", space_with(**{"baselines.wise_alphas": [0.0, 1.5]}), "wise_alphas must be values in [0, 1]"),
    ("wise alphas repeated", space_with(**{"baselines.wise_alphas": [0.5, 0.5]}), "wise_alphas must not repeat"),
    ("unknown baselines key", space_with(**{"baselines.alphas": [0.5]}), "unknown key 'baselines.alphas' (did you mean 'wise_alphas'?)"),
    ("top level is a list", "- 1\n- 2\n", "expected a mapping at the top level"),
    ("unknown top-level key", space_with(budgte={"trials": 2}), "unknown key 'budgte' (did you mean 'budget'?)"),
    ("unknown parameter", space_with(**{"parameters.mask_ratoi": {"type": "float", "low": 0.1, "high": 0.5}}),
     "unknown parameter 'mask_ratoi' (did you mean 'mask_ratio'?)"),
    ("unknown fixed key", space_with(**{"fixed.stesp": 4}), "unknown parameter 'stesp' (did you mean 'steps'?)"),
    ("wrong type", space_with(**{"budget.trials": "many"}), "budget.trials: Input should be a valid integer"),
    ("out of range", space_with(**{"budget.trials": 0}), "budget.trials: Input should be greater than or equal to 1"),
    ("unknown sampler", space_with(**{"sampler.name": "bayes"}), "sampler.name: Input should be 'tpe', 'nsga2', 'gp', 'botorch', 'random' or 'grid'"),
    ("unknown strategy", space_with(**{"parameters.region.choices": ["object", "everywhere"]}),
     "region: Input should be 'object', 'context', 'random' or 'none'"),
    ("conditional without parent", space_with(**{"parameters.region": DELETE}),
     "conditional on 'region', which is not a searched categorical parameter"),
    ("condition value not a choice", space_with(**{"parameters.mask_ratio.when": {"region": ["context"]}}),
     "'when' values for 'region' must be among its choices"),
    ("float without bounds", space_with(**{"parameters.mask_ratio": {"type": "float", "low": 0.5}}), "needs low < high"),
    ("log scale at zero", space_with(**{"parameters.w_distill": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}),
     "a log-scale parameter needs low > 0"),
    ("both searched and fixed", space_with(**{"fixed.mask_ratio": 0.3}), "'mask_ratio' is both searched and fixed"),
    ("bad fixed value", space_with(**{"fixed.lr": -1}), "lr: Input should be greater than 0"),
    ("bad device", space_with(**{"fixed.device": "gpu"}), "device: must be auto, cpu, cuda or cuda:N"),
    ("cuda without a GPU per trial", space_with(**{"fixed.device": "cuda"}), "device 'cuda' needs a GPU per trial"),
    # issue 36's measured bugs: refused at load, not by every trial or silently overwritten
    ("workers that do not divide the batch", space_with(**{"fixed.batch_size": 64, "resources": {"cpu": 1, "workers": 3}}),
     "a trial would not be a valid run (batch_size (64) must be a multiple of accum_steps x workers (1 x 3)); check "
     "'fixed' and resources.workers"),
    ("a fixed seed", space_with(**{"fixed.seed": 7}), "'seed' is the sweep's own (its seed;"),
    ("a searched seed", space_with(**{"parameters.seed": {"type": "int", "low": 0, "high": 3}}),
     "a searched seed would be overwritten in every trial; remove it"),
    # GPUs a trial cannot use (issue 34)
    ("a GPU fraction per data-parallel worker", space_with(resources={"cpu": 1, "gpu": 0.5, "workers": 2}),
     "resources.gpu is 0.5 with 2 data-parallel workers: each worker needs a whole GPU"),
    ("two GPUs for one process", space_with(resources={"cpu": 1, "gpu": 2}),
     "resources.gpu is 2, but a trial's process (or each data-parallel worker) uses one GPU: for 2 GPUs per trial "
     "give resources {gpu: 1, workers: 2}"),
    ("bad precision", space_with(**{"fixed.precision": "fp8"}), "precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
    ("unknown objective metric", space_with(**{"objective.metrics": ["id_acc", "speed"]}), "unknown objective metric 'speed'"),
    ("objective lengths differ", space_with(**{"objective.directions": ["max"]}), "must have the same, non-zero length"),
    ("negative GPU", space_with(**{"resources.gpu": -1}), "resources.gpu: Input should be greater than or equal to 0"),
    ("unknown scheduler", space_with(**{"scheduler.name": "hyperband"}), "scheduler.name: Input should be 'none', 'asha' or 'mo_asha'"),
    ("MO-ASHA max_t at grace", space_with(**{"scheduler": {"name": "mo_asha", "grace_period": 3, "max_t": 3}}),
     "scheduler.max_t (3) must be larger than grace_period (3)"),
    ("MO-ASHA tie break", space_with(**{"scheduler": {"name": "mo_asha", "tie_break": "random"}}),
     "scheduler.tie_break: Input should be 'eps_net' or 'crowding'"),
    ("grid with conditions", space_with(**{"sampler.name": "grid"}), "the grid sampler does not take conditional parameters"),
    ("world config typo", space_with(**{"task.world.sed": 3}), "unknown key 'task.world.sed' (did you mean 'seed'?)"),
    ("world out of range", space_with(**{"task.world.background_correlation": 2}), "background_correlation: Input should be less than or equal to 1"),
    ("unknown model name", space_with(task={"imagenet": {"model": "ViT-B-33", "train_dir": "a", "val_dir": "b"}}),
     "unknown open_clip model name 'ViT-B-33' (did you mean 'ViT-B-32'?)"),
    ("missing dataset folder", space_with(task={"imagenet": {"model": "ViT-B-32", "train_dir": "/nonexistent/train", "val_dir": "b"}}),
     "/nonexistent/train: dataset folder not found"),
    ("world without OOD sets", space_with(**{"task.world.ood_shifts": []}), "ood_shifts must list at least one shift"),
    ("unknown OOD set", space_with(task={"imagenet": {"train_dir": "a", "val_dir": "b", "ood_dirs": {"imagenet_c": "c"}}}),
     "Input should be 'imagenet_v2', 'imagenet_r', 'imagenet_sketch', 'imagenet_a' or 'objectnet'"),
]


@pytest.mark.parametrize("case, content, expected", SPACE_CASES, ids=[c[0] for c in SPACE_CASES])
def test_bad_search_space(case, content, expected, tmp_path, cache_dir):
    space = tmp_path / "space.yaml"
    space.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    (tmp_path / "runs" / "older").mkdir(parents=True)
    (tmp_path / "runs" / "older" / "records.jsonl").write_text('{"trial_id": "x"}\n')
    before = snapshot(tmp_path)
    if case == "missing dataset folder":
        # the folder is only read when a trial builds its task; check the validated space then fails clearly
        result = invoke("train", "--config", _train_config(tmp_path, content), cwd=tmp_path, cache_dir=cache_dir)
    elif case == "unknown model name":
        result = invoke("train", "--config", _train_config(tmp_path, content), cwd=tmp_path, cache_dir=cache_dir)
    else:
        result = invoke("sweep", space, "--storage", tmp_path / "runs", "--name", "new", cwd=tmp_path, cache_dir=cache_dir)
    assert_one_line_exit_2(result, expected)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not (tmp_path / "runs" / "new").exists()


def _train_config(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "train.yaml"
    imagenet = dict(space["task"]["imagenet"])
    imagenet.setdefault("pretrained", None)
    path.write_text(yaml.safe_dump({"imagenet": imagenet, "steps": 1}))
    return path


def test_cli_level_bad_inputs(tmp_path, cache_dir):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    (tmp_path / "notexp").mkdir()
    cases = [
        (["sweep", "no_such_space"], "unknown search space 'no_such_space'"),
        (["sweep", "dmeo"], "(did you mean 'demo'?)"),
        (["sweep", "demo", "--trials", "0"], "--trials must be >= 1"),
        (["sweep", "demo", "--concurrency", "-2"], "--concurrency must be >= 1"),
        (["status", tmp_path / "missing"], "experiment directory not found"),
        (["status", tmp_path / "notexp"], "not a robusttune experiment"),
        (["resume", tmp_path / "missing"], "experiment directory not found"),
        (["world", "prepare", "--cache-dir", __file__], "is a file, not a folder"),
    ]
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "manifest.json").write_text("{}")
    cases += [
        (["sweep", "demo", "--storage", tmp_path / "a_file"], "cannot create the experiment directory"),
        (["sweep", "demo", "--storage", tmp_path / "runs", "--name", "taken"], "experiment already exists"),
    ]
    if os.geteuid() != 0:  # root can write anywhere; the permission case only means something for users
        cases.append((["sweep", "demo", "--storage", readonly / "sub"], "cannot create the experiment directory"))
    for args, expected in cases:
        assert_one_line_exit_2(invoke(*args, cwd=tmp_path, cache_dir=cache_dir), expected)


def test_empty_ood_folder_is_refused_before_the_model_is_built(tmp_path, cache_dir):
    from PIL import Image

    for split in ("train", "val"):
        for k in range(1000):
            (tmp_path / split / f"n{k:08d}").mkdir(parents=True)
    for j in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "n00000000" / f"{j}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "n00000000" / "a.png")
    (tmp_path / "sketch").mkdir()
    for k in range(1000):
        (tmp_path / "sketch" / f"n{k:08d}").mkdir()
    config = {"imagenet": {"model": "ViT-B-32", "pretrained": None, "train_dir": str(tmp_path / "train"),
                           "val_dir": str(tmp_path / "val"), "val_holdout": 1,
                           "ood_dirs": {"imagenet_sketch": str(tmp_path / "sketch")}}, "steps": 1}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("train", "--config", path, "--out", tmp_path / "out", cwd=tmp_path, cache_dir=cache_dir)
    assert_one_line_exit_2(result, "sketch: no images found")


def test_bench_bad_inputs(tmp_path, cache_dir):
    import pandas as pd

    pd.DataFrame({"x": [1, 2]}).to_parquet(tmp_path / "plain.parquet")
    (tmp_path / "nogrid.yaml").write_text(yaml.safe_dump({"parameters": {"lr": {"type": "float", "low": 1e-4, "high": 1e-3}}}))
    cases = [
        (["bench", "replay", "nope"], "no table 'nope'"),
        (["bench", "replay", tmp_path / "missing.parquet"], "missing.parquet: no such table file"),
        (["bench", "replay", tmp_path / "plain.parquet"], "not a robusttune table"),
        (["bench", "replay", "mini_full", "--budget", "0"], "--budget is a fraction of the table's compute"),
        (["bench", "replay", "mini_full", "--seeds", "1,x"], "--seeds takes comma-separated integers"),
        (["bench", "replay", "mini_full", "--sampler", "paper_grid"], "--scheduler must be none for the paper's grid"),
        (["bench", "tabulate", "demo", "--out", tmp_path / "t.parquet"], "tabulate does not take conditional parameters"),
        (["bench", "tabulate", tmp_path / "nogrid.yaml", "--out", tmp_path / "t.parquet"], "needs 'grid' values"),
        (["bench", "tabulate", "mini_full", "--out", tmp_path / "t.parquet", "--concurrency", "0"], "--concurrency must be >= 1"),
    ]
    for args, expected in cases:
        assert_one_line_exit_2(invoke(*args, cwd=tmp_path, cache_dir=cache_dir), expected)
    assert not (tmp_path / "t.parquet").exists() and not (tmp_path / "runs").exists()
