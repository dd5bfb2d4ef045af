"""The Python API as the README shows it: its example runs as written, in a fresh working directory."""

import re
from pathlib import Path

import pytest
from helpers import ROOT

README = ROOT / "README.md"

pytestmark = pytest.mark.slow


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch, cache_dir, default_world_data, capsys,
                                               ray_local):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUSTTUNE_CACHE_DIR", str(cache_dir))
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    rt, result = namespace["rt"], namespace["result"]
    assert isinstance(result, rt.SweepResult) and result.experiment == Path("runs/notebook")
    assert sum(result.counts.values()) == 2 and result.counts["complete"] >= 1
    assert result.pareto and all(row["status"] == "complete" for row in result.pareto)
    status = namespace["status"]
    assert status.counts == result.counts and len(status.trials) == 2
    assert Path(namespace["report"].files["index.html"]).is_file()
    assert "runs/notebook/report/index.html" in capsys.readouterr().out
    # the experiment directory is the one records reader's: the baselines ran after the trials
    from robusttune.analysis import results

    references = results.baselines(result.experiment)
    assert set(references["kind"]) == {"baseline", "wise", "merge"}  # and the merges of its trials
    assert sorted(references[references["source"] == "vanilla-ft"]["alpha"]) == [0.0, 0.5, 1.0]  # the space's alphas
