"""The experiment lock excludes: several processes taking it in a loop (one of them also removing and re-creating the
folder, as a failed sweep and an overwrite do) never hold it at the same moment, and a refusal names the holder."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robusttune.errors import ConfigError, DataError
from robusttune.experiment import LOCK, ExperimentLock, lock_holder, remove_experiment

WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from robusttune.errors import ConfigError, DataError
    from robusttune.experiment import ExperimentLock, remove_experiment

    folder, shared, seconds, remover = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    inside, counter = shared / "inside", shared / "counter"
    taken = overlaps = refused = gone = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            lock = ExperimentLock(folder, f"worker {os.getpid()}").__enter__()
        except ConfigError:
            refused += 1
            continue
        except DataError:  # the folder was removed by the remover: make it again, as a new sweep would
            gone += 1
            folder.mkdir(exist_ok=True)
            continue
        try:  # the critical section: a marker only one holder may create, and an unguarded read-modify-write
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
        except FileExistsError:
            overlaps += 1
        else:
            value = int(counter.read_text() or 0)
            for _ in range(2000):  # some work while holding it, so others try meanwhile
                pass
            counter.write_text(str(value + 1))
            taken += 1
            os.unlink(inside)
        if remover and taken % 3 == 0:
            remove_experiment(lock)  # lock file last, then released
        else:
            lock.release()
    print(taken, overlaps, refused, gone)
""")


def test_several_processes_never_hold_it_at_once(tmp_path):
    folder, shared = tmp_path / "exp", tmp_path / "shared"
    folder.mkdir()
    shared.mkdir()
    (shared / "counter").write_text("0")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [subprocess.Popen([sys.executable, str(script), str(folder), str(shared), "4", "1" if i == 0 else "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    tallies = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        tallies.append([int(x) for x in out.split()])
    taken, overlaps, refused, gone = (sum(column) for column in zip(*tallies))
    assert overlaps == 0, tallies  # never two holders
    assert int((shared / "counter").read_text()) == taken  # no lost update: every section ran alone
    assert taken >= 40 and refused >= 40 and gone >= 1, tallies  # it was contended, and the folder did go away


def test_the_lock_file_stays_and_is_emptied_on_release(tmp_path):
    with ExperimentLock(tmp_path, "robusttune sweep demo"):
        info = json.loads((tmp_path / LOCK).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert lock_holder(tmp_path).startswith("'robusttune sweep demo' (pid")
    assert (tmp_path / LOCK).read_text() == "" and lock_holder(tmp_path) is None
    with ExperimentLock(tmp_path, "again"):
        pass


def test_a_lock_on_a_removed_file_is_never_taken(tmp_path):
    """A process that opened the lock file before the holder removed the folder must not run in it afterwards."""
    import fcntl

    folder = tmp_path / "exp"
    folder.mkdir()
    holder = ExperimentLock(folder, "first").__enter__()
    early = open(folder / LOCK, "a+")  # what a second process has open when the first removes the folder
    remove_experiment(holder)
    fcntl.flock(early.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file's lock is free: the check must see it
    early.close()
    with pytest.raises(DataError, match="experiment directory not found"):
        ExperimentLock(folder, "second").__enter__()


def test_a_stale_holder_is_named_with_the_process_that_kept_the_lock(tmp_path):
    """A holder that died while a forked child kept the lock: the refusal says so and names the child."""
    folder = tmp_path / "exp"
    folder.mkdir()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        from robusttune.experiment import ExperimentLock
        lock = ExperimentLock({str(folder)!r}, "robusttune sweep demo").__enter__()
        if os.fork():
            os._exit(0)  # the holder dies; its forked child keeps the lock
        os.close(1)  # tells the test that the parent is gone and the child holds the lock
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.read()  # EOF once both the parent and the child have let stdout go
        child.wait(timeout=30)
        with pytest.raises(ConfigError) as refused:
            ExperimentLock(folder, "robusttune resume").__enter__()
        message = str(refused.value)
        assert f"pid {child.pid}" in message and "no longer running" in message and "left behind by 'robusttune sweep demo'" in message
        assert message.count("\n") == 0
    finally:
        child.stdin.close()  # the orphan reads EOF and exits
    # and once the leftover is gone (it reads EOF and exits) the lock is free
    import time

    deadline = time.monotonic() + 20
    while True:
        try:
            with ExperimentLock(folder, "robusttune resume"):
                break
        except ConfigError:
            assert time.monotonic() < deadline, "the leftover process never let the lock go"
            os.sched_yield()


def test_the_loser_of_two_overwrites_names_the_winner_and_removes_nothing(tmp_path, monkeypatch):
    """Both checked the folder while it was free; the winner took it first: the loser, at its claim, is refused
    naming the winner, and the winner's files stay (it used to fail with ``latest.pt: No such file or directory``)."""
    from robusttune import experiment as layout
    from robusttune.experiment import claim_new_experiment, write_manifest
    from robusttune.space import load_space

    space, text = load_space("demo")
    folder = tmp_path / "runs" / "exp"
    folder.mkdir(parents=True)
    write_manifest(folder, space, text, seed=0, trials=2, concurrency=1, runner={"kind": "train"})
    winner = claim_new_experiment(tmp_path / "runs", "exp", overwrite=True, command="robusttune sweep demo (winner)")
    try:
        write_manifest(folder, space, text, seed=0, trials=2, concurrency=1, runner={"kind": "train"})
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "latest.pt").write_bytes(b"the winner's")
        monkeypatch.setattr(layout, "lock_holder", lambda path: None)  # the loser's early check saw it free
        with pytest.raises(ConfigError) as refused:
            claim_new_experiment(tmp_path / "runs", "exp", overwrite=True, command="robusttune sweep demo (loser)")
        assert "in use by 'robusttune sweep demo (winner)' (pid" in str(refused.value)
        assert (folder / "checkpoints" / "latest.pt").read_bytes() == b"the winner's"
    finally:
        winner.release()
