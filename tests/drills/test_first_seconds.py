"""Signals from the driver's first second: Ctrl-C, SIGTERM or SIGHUP at a seeded random moment of a sweep's first
seconds (Python starting, the experiment folder being made, Ray starting, the first trial) end it with 128 + the
signal's number, no traceback or crash, no process of its session left, and a last line that is true: the resume
command for a folder that exists, or that nothing was started (and no folder left).

The moments are drawn from a seeded distribution; ``ROBUSTTUNE_SIGNAL_MOMENTS`` (default 4) sets how many, e.g. 20
for the issue's drill. Waiting until a moment is the drill itself: whatever the moment, the assertions must hold."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import tiny_space, write_space

pytestmark = pytest.mark.slow

MOMENTS = int(os.environ.get("ROBUSTTUNE_SIGNAL_MOMENTS", "4"))
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def session_processes(session: int) -> list[str]:
    """Every process of the session (Ray's included, whatever process group it put itself in)."""
    listed = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout.splitlines()
    return [line for line in listed if line.split() and len(line.split()) > 1 and line.split()[1] == str(session)]


def wait_for_no_process(session: int, grace: float) -> list[str]:
    deadline = time.monotonic() + grace
    while True:
        alive = session_processes(session)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)  # polling a state (the process table), not a fixed wait


@pytest.mark.parametrize("moment", range(MOMENTS))
def test_a_signal_in_the_first_seconds_is_safe(moment, tmp_path, tiny_world_config, tiny_prepared, cache_dir):
    draw = random.Random(1000 + moment)
    number, after = draw.choice(SIGNALS), draw.uniform(0.0, 10.0)
    space = tiny_space(tiny_world_config, budget={"trials": 2, "concurrency": 1}, baselines={"wise_alphas": [0.0, 1.0]})
    experiment = tmp_path / "runs" / "early"
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / "err", "wb") as err:
        driver = subprocess.Popen([sys.executable, "-m", "robusttune.cli", "sweep", str(write_space(tmp_path / "s.yaml", space)),
                                   "--storage", str(tmp_path / "runs"), "--name", "early"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        try:
            driver.wait(timeout=after)  # the moment (it may end before: then nothing is sent)
        except subprocess.TimeoutExpired:
            driver.send_signal(number)
        code = driver.wait(timeout=120)
        said = (tmp_path / "err").read_text(errors="replace")
        lines = [line for line in said.splitlines() if line.strip()]
        where = f"{signal.Signals(number).name} at {after:.2f} s: exit {code}: {said[-2000:]}"
        assert code in (0, 128 + number, -number), where
        assert "Traceback" not in said and "core dumped" not in said and "Fatal Python error" not in said, where
        last = lines[-1] if lines else ""
        if code == 0:
            return
        if code == -number:  # still starting Python and importing, before robusttune's handlers: nothing made yet
            assert not experiment.exists() and not lines, where
            return
        if "continue with: robusttune resume" in last:
            assert last.endswith(f"robusttune resume {experiment}") and (experiment / "manifest.json").is_file(), where
        else:
            assert "nothing was started" in last or last == "robusttune: interrupted", where
            assert not experiment.exists() or not any(p.name != ".lock" for p in experiment.iterdir()), where
        # Ray's dashboard and runtime-env agents of a Ray stopped while it was starting end on their own once they
        # lose its GCS (about 60 s under load): not yet shut down with it (issue 38, open), never left for good
        assert wait_for_no_process(driver.pid, grace=120) == [], where
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        for line in session_processes(driver.pid):
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
