"""Search-space files the loader must refuse, each in one line with exit code 2 and before anything is created or
Ray starts: duplicated keys, empty files, files over the loader's bounds (size, values, depth), and the malformed or
extreme files that used to end in a traceback. The shipped spaces still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, invoke

from robusttune.config import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_mapping, load_yaml_text
from robusttune.errors import ConfigError
from robusttune.space import MAX_CHOICES, MAX_GRID_POINTS, builtin_spaces, load_space

BASE = "task: {world: {name: tiny}}\nparameters:\n  region: {type: categorical, choices: [object, none]}\nfixed: {steps: 4}\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))  # 9**9 values
GRID_PARAMETERS = "".join(f"  {name}: {{type: float, low: 0.01, high: 0.9, grid: [{', '.join(str(0.01 * (i + 1)) for i in range(60))}]}}\n"
                          for name in ("lr", "w_distill", "weight_decay", "grad_clip"))  # 60**4 = 12,960,000 points

CASES = [  # (case, file content, what the one line says)
    # silently accepted before
    ("duplicated key", BASE + "budget:\n  trials: 2\n  trials: 500\n",
     "line 7: key 'budget.trials' must appear once, got it again (first at line 6)"),
    ("duplicated top-level key", "budget: {trials: 2}\n" + BASE + "budget: {trials: 500}\n", "key 'budget' must appear once"),
    ("duplicated key in a flow mapping", "fixed: {steps: 4}\nobjective: {metrics: [id_acc], directions: [max], "
     "scalarization: {weights: [1], weights: [2]}}\n", "key 'objective.scalarization.weights' must appear once"),
    ("duplicated key, other spelling", "fixed: {1: a, 0x1: b}\n", "key 'fixed.0x1' must appear once"),
    ("empty file", "", "the file is empty; expected a mapping of keys to values"),
    ("whitespace only", "  \n\n", "the file is empty"),
    ("comments only", "# budget: {trials: 2}\n", "the file is empty"),
    ("null document", "---\n", "expected a mapping at the top level, got null"),
    ("two documents", BASE + "---\nbudget: {trials: 2}\n", "expected a single document in the stream"),
    ("boolean for a number", BASE + "budget: {trials: yes}\n", "budget.trials: Input should be a number, not a boolean"),
    ("boolean choice for a number", "parameters: {w_distill: {type: categorical, choices: [true, 1.0]}}\n",
     "parameters.w_distill: Input should be a number, not a boolean"),
    ("infinite weight", BASE.replace("steps: 4", "steps: 4, w_distill: .inf"), "w_distill: Input should be a finite number"),
    ("infinite choice", "parameters: {w_distill: {type: categorical, choices: [.inf]}}\n", "Input should be a finite number"),
    ("NaN objective weight", "objective: {scalarization: {weights: [.nan, 1]}}\n", "weights.0: Input should be a finite number"),
    ("int parameter with a fractional bound", "parameters: {eval_every: {type: int, low: 1.5, high: 4}}\n",
     "an int parameter needs whole-number low, high and step, got low=1.5"),
    ("zero step", "parameters: {lr: {type: float, low: 0.1, high: 0.5, step: 0}}\n", "parameters.lr.step: Input should be greater than 0"),
    ("grid on a categorical parameter", "sampler: {name: grid}\nparameters: {region: {type: categorical, choices: [object], grid: [none]}}\n",
     "a categorical parameter takes 'choices', not 'grid' (a grid sweep uses its choices)"),
    ("grid value outside the range", "sampler: {name: grid}\nparameters: {lr: {type: float, low: 0.001, high: 0.01, grid: [0.5]}}\n",
     "grid values must be within [low, high] = [0.001, 0.01], got 0.5"),
    ("'when' with no value", "parameters:\n  region: {type: categorical, choices: [object, none]}\n"
     "  mask_ratio: {type: float, low: 0.1, high: 0.9, when: {region: []}}\n", "when.region: Tuple should have at least 1 item"),
    ("list as a choice", "parameters: {seed: {type: categorical, choices: [[1, 2]]}}\n", "choices must be strings, numbers or null, got [1, 2]"),
    ("set tag", "parameters: {region: {type: categorical, choices: !!set {object, none}}}\n", "the YAML tag !!set is not allowed"),
    ("objective metric twice", "objective: {metrics: [id_acc, id_acc], directions: [max, max]}\n", "must name each metric once"),
    ("trials beyond the bound", BASE + "budget: {trials: 1000000000000000000000000000000}\n",
     "budget.trials: Input should be less than or equal to 100000"),
    ("concurrency beyond the bound", BASE + "budget: {concurrency: 1000000000000}\n", "budget.concurrency: Input should be less than or equal to 10000"),
    ("huge seed", BASE + "sampler: {seed: 100000000000000000000000}\n", "sampler.seed: Input should be less than 4294967296"),
    ("a trial seed (the sweep's)", BASE.replace("steps: 4", "steps: 4, seed: 100000000000000000000000"), "'seed' is the sweep's"),
    ("negative sampler seed", BASE + "sampler: {seed: -5}\n", "sampler.seed: Input should be greater than or equal to 0, got -5"),
    ("huge world image", "task: {world: {image_size: 100000, canvas_size: 100000}}\n", "task.world.image_size: Input should be less than or equal to 224"),
    # bounds on what loading and validating may cost
    ("file over the size bound", "description: " + "x" * MAX_FILE_BYTES + "\n", f"a config file must be at most 1 MiB, got {MAX_FILE_BYTES + 14} bytes"),
    ("too many values", "parameters: {seed: {type: categorical, choices: [" + ", ".join(["1"] * MAX_NODES) + "]}}\n",
     f"a config file must hold at most {MAX_NODES} values"),
    ("alias bomb", BOMB + BASE, f"line 6: a config file must hold at most {MAX_NODES} values (scalars, list items and keys), got more (aliases expanded)"),
    ("too many choices", "parameters: {seed: {type: categorical, choices: [" + ", ".join(map(str, range(MAX_CHOICES + 1))) + "]}}\n",
     f"parameters.seed.choices: Tuple should have at most {MAX_CHOICES} items"),
    ("astronomical grid", "sampler: {name: grid}\nparameters:\n" + GRID_PARAMETERS + "fixed: {steps: 4}\n",
     f"the grid sampler's grid must have at most {MAX_GRID_POINTS} points (the product of the parameters' value counts), got 12960000"),
    # tracebacks before
    ("deep nesting", "fixed: {steps: " + "[" * 5000 + "]" * 5000 + "}\n", f"lists and mappings must nest at most {MAX_DEPTH} levels deep"),
    ("deep block nesting", "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n", "must nest at most 32 levels deep"),
    ("deep through aliases", "d0: &d0 [1]\n" + "".join(f"d{i}: &d{i} [*d{i - 1}]\n" for i in range(1, 40)),
     "must nest at most 32 levels deep, got deeper (aliases expanded)"),
    ("recursive alias", "fixed: &a {x: *a}\n", "line 1: an alias must not refer to a list or mapping that contains it"),
    ("unreadable tagged scalar", BASE + "budget: {trials: !!int abc}\n", "line 5: 'abc' is not a valid !!int"),
    ("unreadable bool tag", BASE + "budget: {trials: !!bool maybe}\n", "'maybe' is not a valid !!bool"),
    ("integer too long", BASE + "budget: {trials: " + "9" * 5000 + "}\n", "line 5: an integer of 5000 characters is too long"),
    ("infinite int bound", "parameters: {eval_every: {type: int, low: 1, high: .inf}}\n", "parameters.eval_every.high: Input should be a finite number, got inf"),
    ("newline in a key", 'fixed: {"st\\neps": 4}\n', "unknown parameter 'st\\neps' (did you mean 'steps'?)"),
]


@pytest.fixture(autouse=True)
def ray_never_starts(monkeypatch):
    """Validation happens before Ray starts: a bad file that got as far as starting Ray fails the test."""
    import robusttune.search.sweep as sweep

    monkeypatch.setattr(sweep, "_init_ray", lambda *a, **k: pytest.fail("Ray was started for a file that should be refused"))


def assert_refused(result, expected: str, space: Path, storage: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(space) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not storage.exists()  # nothing created (and Ray never started: see ``ray_never_starts``)


@pytest.mark.parametrize("case, content, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_space_file_is_refused_in_one_line(case, content, expected, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(content, encoding="utf-8")
    result = invoke("sweep", space, "--storage", tmp_path / "runs", "--name", "x")
    assert_refused(result, expected, space, tmp_path / "runs")


JSON_CASES = [
    ("duplicated key", '{"budget": {"trials": 2, "trials": 500}}', "key 'trials' must appear once in a JSON object"),
    ("empty", "", "the file is empty"),
    ("null", "null", "expected a mapping at the top level, got null"),
    ("deep nesting", '{"fixed": ' + "[" * 10000 + "]" * 10000 + "}", "must nest at most 32 levels deep"),
    ("integer too long", '{"budget": {"trials": ' + "9" * 5000 + "}}", "not valid JSON: an integer is too long"),
    ("invalid UTF-8", b'{"name": "\xff"}', "not valid JSON: must be UTF-8 text, got byte 0xff at position 10"),
]


@pytest.mark.parametrize("case, content, expected", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_a_bad_json_space_is_refused_in_one_line(case, content, expected, tmp_path):
    space = tmp_path / "space.json"
    space.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = invoke("sweep", space, "--storage", tmp_path / "runs", "--name", "x")
    assert_refused(result, expected, space, tmp_path / "runs")


def test_the_loader_refuses_in_one_line_naming_the_source():
    """The frozen copy (``experiment.load_frozen_space``, ``parse_space_text``) is read with the same loader."""
    refused = {"a: [{b: 1}, {b: 1, b: 2}]\n": "line 1: key 'a.1.b' must appear once, got it again",
               "a:\n  - b: 1\n    b: 2\n": "line 3: key 'a.0.b' must appear once, got it again (first at line 2)",
               "x: !!binary aGk=\n": "the YAML tag !!binary is not allowed"}
    loader_cases = {"duplicated key", "duplicated top-level key", "duplicated key in a flow mapping",
                    "duplicated key, other spelling", "empty file", "whitespace only", "comments only", "null document",
                    "two documents", "set tag", "alias bomb", "deep nesting", "deep block nesting",
                    "deep through aliases", "recursive alias", "unreadable tagged scalar", "unreadable bool tag",
                    "integer too long"}
    refused.update({content: expected for case, content, expected in CASES if case in loader_cases})
    assert len(refused) == 3 + len(loader_cases)
    for content, expected in refused.items():
        with pytest.raises(ConfigError) as caught:
            load_yaml_text(content, "frozen copy")
        message = str(caught.value)
        assert message.startswith("frozen copy: ") and expected in message and len(message.splitlines()) == 1, message


def test_yaml_features_that_are_fine_still_load(tmp_path):
    text = ("base: &b {type: float, low: 0.1, high: 0.9}\n"  # anchors, aliases and merge keys (overriding a merged key)
            "c: {<<: *b, high: 0.5}\n"
            "d: [*b, *b]\n"
            "e: 1.0e-4\n")
    assert load_yaml_text(text, "x") == {"base": {"type": "float", "low": 0.1, "high": 0.9},
                                         "c": {"type": "float", "low": 0.1, "high": 0.5},
                                         "d": [{"type": "float", "low": 0.1, "high": 0.9}] * 2, "e": 1e-4}
    bom = tmp_path / "bom.yaml"
    bom.write_text("\ufeff" + BASE, encoding="utf-8")
    space, text = load_space(str(bom))
    assert list(space.parameters) == ["region"] and not text.startswith("\ufeff")
    as_json = tmp_path / "space.json"
    as_json.write_text(json.dumps(yaml.safe_load(BASE)))
    assert load_mapping(as_json) == yaml.safe_load(BASE)


def test_python_tags_stay_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("name: !!python/object/apply:os.system [echo hi]\n")
    result = invoke("sweep", space, "--storage", tmp_path / "runs", "--name", "x")
    assert_refused(result, "could not determine a constructor for the tag", space, tmp_path / "runs")


def test_the_shipped_spaces_still_load():
    names = sorted(builtin_spaces())
    assert {"demo", "mini_full", "paper", "paper_proxy"} <= set(names)
    for name in names:
        space, text = load_space(name)
        assert space.name == name and text
        assert load_yaml_text(text, name)  # the frozen copy reads back with the same loader
        files = ROOT / "search_spaces" / f"{name}.yaml"
        assert load_space(str(files))[0].parameters == space.parameters


def test_the_paper_spaces_methods_block_loads_in_place_of_its_parameters(tmp_path):
    """The commented block of ``paper.yaml``, uncommented in place of its ``parameters``, is a valid space that
    searches each method with the paper's preset and confirms the best of each."""
    text = (ROOT / "search_spaces" / "paper.yaml").read_text()
    block = text.split("# --- methods block\n")[1].split("# --- end of the methods block\n")[0]
    assert all(line.startswith("# ") for line in block.splitlines())
    paper = yaml.safe_load(text)
    edited = {**paper, **yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))}
    (tmp_path / "methods.yaml").write_text(yaml.safe_dump(edited))
    space, _ = load_space(str(tmp_path / "methods.yaml"))
    assert set(space.parameters["method"].choices) == {"ft", "lp_ft", "l2sp", "flyp", "lipsum", "masked_distill"}
    assert space.confirm.per_method and space.fixed["preset"] == "paper"
