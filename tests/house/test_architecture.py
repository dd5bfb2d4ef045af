"""The layering, enforced: import-linter contracts (pyproject.toml) and no import cycles, checked on a copy of
the package laid out as it installs (``analysis/`` inside ``robusttune/``, so the contracts can name it)."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import ROOT

CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    """``robusttune/`` with ``analysis/`` and ``search_spaces/`` copied in, as the wheel's package-dir mapping
    installs them."""
    site = tmp_path_factory.mktemp("site")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "robusttune", site / "robusttune", ignore=ignore)
    shutil.copytree(ROOT / "analysis", site / "robusttune" / "analysis", ignore=ignore)
    shutil.copytree(ROOT / "search_spaces", site / "robusttune" / "search_spaces", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", site / "pyproject.toml")
    return site


def test_every_import_contract_is_kept(installed_layout):
    linter = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    env = {**os.environ, "PYTHONPATH": str(installed_layout)}
    result = subprocess.run([linter, "--no-cache"], cwd=installed_layout, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    kept = set(re.findall(r"^(.+?) KEPT$", result.stdout, flags=re.M))
    assert kept == {contract["name"] for contract in CONTRACTS}, result.stdout
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken" in result.stdout
    assert {c["id"] for c in CONTRACTS} >= {"search-no-analysis", "analysis-reads-files", "layer0-light"}


def test_no_import_cycles_among_the_packages_modules(installed_layout):
    code = """
import sys, grimp
graph = grimp.build_graph("robusttune")
edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i.startswith("robusttune")} for m in graph.modules}
index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on_stack.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop(); on_stack.discard(w); component.append(w)
            if w == v: break
        if len(component) > 1: cycles.append(sorted(component))
sys.setrecursionlimit(10000)
for module in sorted(edges):
    if module not in index: visit(module)
print(len(graph.modules), cycles)
"""
    env = {**os.environ, "PYTHONPATH": str(installed_layout)}
    result = subprocess.run([sys.executable, "-c", code], cwd=installed_layout, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    count, cycles = result.stdout.split(" ", 1)
    assert int(count) > 50  # the whole package was seen, analysis included
    assert cycles.strip() == "[]", f"import cycles: {cycles}"


def test_analysis_is_importable_and_reads_files_only():
    code = ("import sys, pathlib, robusttune.analysis as a; print(pathlib.Path(a.__file__).parent.name, "
            "any(m in sys.modules for m in ('torch', 'ray', 'optuna', 'open_clip')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["analysis", "False"], result.stderr


def test_importing_the_package_and_its_api_is_cheap():
    code = ("import sys, robusttune, robusttune.config, robusttune.cli, robusttune.api; robusttune.status; "
            "print(any(m in sys.modules for m in ('torch', 'ray', 'optuna')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
