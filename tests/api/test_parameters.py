"""Every command is an API function; a bad argument is a ``ParameterError`` that names the parameter as the API
spells it (never a ``--flag``), raised before any work; the CLI says the same error with its flag."""

import ast
import re

import pytest
from helpers import ROOT, assert_one_line_exit_2, invoke

import robusttune as rt
from robusttune.cli import build_parser
from robusttune.errors import ParameterError


def bad_calls(tmp_path):
    """(call, parameter, what the message says): each refused before anything is read, built or written."""
    existing = tmp_path / "exists.parquet"
    existing.write_text("")
    return [
        (lambda: rt.sweep("demo", storage=tmp_path, trials=0), "trials", "must be >= 1, got 0"),
        (lambda: rt.sweep("demo", storage=tmp_path, concurrency=0), "concurrency", "must be >= 1"),
        (lambda: rt.sweep("demo", storage=tmp_path, max_failures=-1), "max_failures", "must be >= 0"),
        (lambda: rt.sweep("demo", storage=tmp_path, seed=2**32), "seed", "must be in [0, 2**32)"),
        (lambda: rt.sweep("demo", storage=tmp_path, heartbeat_seconds=-1), "heartbeat_seconds", "must be >= 0 seconds"),
        (lambda: rt.sweep("demo", storage=tmp_path, loggers=["neptune"]), "loggers", "unknown logger 'neptune'"),
        (lambda: rt.sweep("demo", storage=tmp_path, warm_top=3), "warm_top", "needs `warm_start`"),
        (lambda: rt.sweep("demo", storage=tmp_path, warm_start=tmp_path / "none"), "warm_start", "names no experiment"),
        (lambda: rt.plan("demo", trials=0), "trials", "must be >= 1"),
        (lambda: rt.wise(tmp_path / "never-read.pt", alphas=[0.5, 2.0]), "alphas", "must be values in [0, 1]"),
        (lambda: rt.wise(tmp_path / "never-read.pt", alphas=[0.5, 0.5]), "alphas", "must not repeat a value"),
        (lambda: rt.wise(tmp_path / "never-read.pt", out=tmp_path / "no" / "curve.jsonl"), "out",
         "must be a file in an existing folder"),
        (lambda: rt.train({}, out=tmp_path / "run", threads=0), "threads", "must be >= 1"),
        (lambda: rt.train({}, out=existing), "out", "exists and is not a folder"),
        (lambda: rt.baselines(out=tmp_path / "b", steps=0), "steps", "must be >= 1"),
        (lambda: rt.replay("mini_full", budget=0), "budget", "is a fraction of the table's compute"),
        (lambda: rt.replay("mini_full", seeds=[]), "seeds", "names no seed"),
        (lambda: rt.replay("mini_full", sampler="paper_grid"), "scheduler", "must be none for the paper's grid"),
        (lambda: rt.tabulate("mini_full", out=existing), "out", "exists (pass `overwrite` to replace it)"),
        (lambda: rt.tabulate("mini_full", out=tmp_path / "t.parquet", concurrency=0), "concurrency", "must be >= 1"),
        (lambda: rt.tabulate("mini_full", out=tmp_path / "t.parquet", noise_points=2, noise_seeds=1), "noise_points",
         "repeats random points: it needs `points`"),
        (lambda: rt.tabulate("mini_full", out=tmp_path / "t.parquet", points=4, noise_points=5, noise_seeds=1),
         "noise_points", "must be at most points (4)"),
        (lambda: rt.tabulate("mini_full", out=tmp_path / "t.parquet", points=4, noise_points=2), "noise_seeds",
         "and noise_points go together"),
        (lambda: rt.launch("demo", cluster=ROOT / "cluster.yaml", storage="relative/runs"), "storage",
         "must be an absolute path"),
        (lambda: rt.launch("demo", cluster=ROOT / "cluster.yaml", storage="/mnt/runs", max_failures=-1),
         "max_failures", "must be >= 0"),
        (lambda: rt.pretrain_world(out=existing), "out", "exists (pass `overwrite` to replace it)"),
        (lambda: rt.pack(tmp_path, tmp_path / "pack", kind="imagenet_v2", quality=0), "quality", "must lie in 1..100"),
        (lambda: rt.pack(tmp_path, tmp_path / "pack", kind="imagenet_v2", shard_size=0), "shard_size", "must be >= 1"),
        (lambda: rt.pack(tmp_path, tmp_path / "pack", kind="imagenet_v2", encoding="png"), "encoding",
         "must be one of raw, jpeg"),
    ]


def test_a_bad_argument_names_its_parameter_and_nothing_is_made(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("ROBUSTTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    calls = bad_calls(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for call, parameter, problem in calls:
        with pytest.raises(ParameterError) as raised:
            call()
        error = raised.value
        assert error.parameter == parameter and problem in error.problem, (parameter, str(error))
        assert str(error).startswith(f"{parameter} ") and "--" not in str(error), str(error)
    assert sorted(tmp_path.rglob("*")) == before  # no experiment, run folder, table or pack was started


@pytest.mark.parametrize(("args", "said"), [
    (["sweep", "demo", "--heartbeat", "-1"], "--heartbeat must be >= 0 seconds, got -1.0"),
    (["data", "pack", "src", "out", "--kind", "imagenet_v2", "--shard-size", "0"], "--shard-size must be >= 1, got 0"),
])
def test_the_cli_says_the_same_error_with_its_flag(args, said, tmp_path, cache_dir):
    assert_one_line_exit_2(invoke(*args, cwd=tmp_path, cache_dir=cache_dir), said)


def test_a_remedy_quoted_in_a_message_is_said_as_a_flag(tmp_path, cache_dir):
    (tmp_path / "t.parquet").write_text("")
    result = invoke("bench", "tabulate", "mini_full", "--out", tmp_path / "t.parquet", cwd=tmp_path, cache_dir=cache_dir)
    assert_one_line_exit_2(result, f"--out {tmp_path / 't.parquet'} exists (pass --overwrite to replace it)")


def _raised_texts(tree: ast.AST):
    """The string parts of every ``raise X(...)`` in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield node.lineno, part.value


def test_no_library_error_names_a_command_line_flag():
    """The library's errors name parameters; only the CLI turns them into flags (``cli.output.said_with_flags``)."""
    flag = re.compile(r"(^|[\s(`'])--[a-z]")
    found = []
    for path in sorted((ROOT / "robusttune").rglob("*.py")):
        if "cli" in path.relative_to(ROOT / "robusttune").parts:
            continue
        for line, text in _raised_texts(ast.parse(path.read_text())):
            if flag.search(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text.strip()[:80]}")
    assert not found, "\n".join(found)


def _commands(parser):
    """(command path, handler) for every leaf command of the parser."""
    import argparse

    for action in parser._actions:  # argparse keeps its subparsers here; this is a test, not the product
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                handler = sub.get_default("handler")
                leaves = list(_commands(sub))
                yield from ([((name, *path), h) for path, h in leaves] if leaves else [((name,), handler)])


def test_every_command_is_an_api_function_the_cli_calls():
    """Each CLI handler calls ``api.<function>`` for its work, and that function is exported by ``robusttune``."""
    import inspect

    from robusttune import api

    commands = dict(_commands(build_parser()))
    assert len(commands) == 18, sorted(commands)
    for path, handler in commands.items():
        called = set(re.findall(r"\bapi\.(\w+)\(", inspect.getsource(handler)))
        assert called, f"robusttune {' '.join(path)} calls no API function"
        for name in called:
            assert name in api.__all__ and callable(getattr(rt, name)), (path, name)
