"""The documentation site builds strictly (no broken link or anchor), and its reference is the code's."""

import argparse
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
from helpers import ROOT

from robusttune.cli import build_parser
from robusttune.methods import LpFt
from robusttune.space import Resources


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def page_text(site: Path, name: str) -> str:
    return unescape((site / name / "index.html").read_text(encoding="utf-8"))


def test_the_cli_reference_lists_every_command_and_its_flags(site):
    text = page_text(site, "reference/cli")
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        assert f"robusttune {name}" in text, name
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert option in text, (name, option)


def test_the_space_and_training_references_carry_the_fields_descriptions(site):
    """Generated, not written: the descriptions on the page are the ones in the code."""
    training = page_text(site, "reference/training")
    assert LpFt.model_fields["lp_fraction"].description in training
    assert "lp_ft" in training and "masked_distill" in training
    space = page_text(site, "reference/space")
    assert Resources.model_fields["workers"].description in space
    assert "SearchSpace" in space


def test_the_api_reference_is_rendered_from_docstrings(site):
    import robusttune.api as api

    text = " ".join(re.sub(r"<[^>]+>", "", page_text(site, "reference/api")).split())
    for function in (api.sweep, api.report, api.confirm):
        first_line = function.__doc__.strip().splitlines()[0].replace("``", "")
        assert first_line[:50] in text, function.__name__


def test_the_generated_reference_follows_a_changed_description(tmp_path):
    """Change a knob's description in a copy of the code: the generated page changes with it."""
    script = ROOT / "docs" / "gen_reference.py"
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys, types\n"
        "files = {}\n"
        "class _Open:\n"
        "    def __init__(self, name, mode): self.name = name; files[name] = ''\n"
        "    def __enter__(self): return self\n"
        "    def __exit__(self, *a): pass\n"
        "    def write(self, text): files[self.name] += text\n"
        "sys.modules['mkdocs_gen_files'] = types.SimpleNamespace(open=_Open)\n"
        "from robusttune.methods import LpFt\n"
        "LpFt.model_fields['lp_fraction'].description = 'a changed description 1234'\n"
        "LpFt.model_rebuild(force=True)\n"
        f"exec(compile(open({str(script)!r}).read(), 'gen_reference.py', 'exec'), {{'__name__': '__main__'}})\n"
        "print('a changed description 1234' in files['reference/training.md'])\n")
    result = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True"
