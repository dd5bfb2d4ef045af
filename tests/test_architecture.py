"""The layering of DESIGN.md section 2, enforced with import-linter contracts (pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    linter = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([linter, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


def test_analysis_is_importable_and_reads_files_only():
    code = ("import sys, pathlib, robusttune.analysis as a; print(pathlib.Path(a.__file__).parent.name, "
            "any(m in sys.modules for m in ('torch', 'ray', 'optuna', 'open_clip')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["analysis", "False"], result.stderr


def test_importing_the_package_is_cheap():
    code = "import sys, robusttune, robusttune.config, robusttune.cli; print(any(m in sys.modules for m in ('torch', 'ray', 'optuna')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
