"""Other libraries' words stay off the console: Ray Tune's tracebacks and its resume hint, Python warnings (matplotlib's,
PyTorch's) and the lines Ray's workers print go to the experiment's log, and robusttune's one line names it."""

import logging
import sys
import warnings

import pytest

from robusttune.errors import Interrupted, SweepError
from robusttune.search.console import LIBRARY_LOG, LibraryLog


def planted(experiment) -> None:
    """What Ray, Ray Tune and the libraries say during a sweep that fills its disk and is interrupted."""
    from robusttune.search import ray_compat as door

    try:
        raise OSError(28, "No space left on device")
    except OSError:
        logging.getLogger("ray.tune.execution.tune_controller").exception("Trial task failed")
        logging.getLogger("ray.train._internal.syncer").error("Syncing failed", exc_info=True)
    logging.getLogger("ray.tune.tune").warning("Experiment has been interrupted, but the most recent state was saved.\n"
                                               f"Resume experiment with: Tuner.restore(path=\"{experiment}\", trainable=...)")
    warnings.warn("No artists with labels found to put in legend.", UserWarning)
    door.worker_lines_dispatcher().emit({"lines": ["\x1b[36mtrial abc failed: non-finite loss\x1b[0m"], "pid": 4242,
                                         "task_name": "compute_merge", "is_err": True, "ip": "127.0.0.1"})


def test_planted_library_words_go_to_the_log_not_the_console(tmp_path, capfd):
    import ray  # noqa: F401  (Ray configures its loggers on import)
    from robusttune.search import ray_compat as door

    door.worker_lines_dispatcher().add_handler(door.WORKER_LINES_HANDLER, lambda data: print(data["lines"], file=sys.stderr))
    try:
        capfd.readouterr()
        with pytest.raises(SweepError) as raised:
            with LibraryLog(tmp_path):
                planted(tmp_path)
                logging.getLogger("ray").handlers.clear()  # what ray.init(configure_logging=False) does
                logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
                raise SweepError("no space left on DIR")
        console = capfd.readouterr()
        assert console.out == "" and console.err == "", console
        log = (tmp_path / LIBRARY_LOG).read_text()
        for said in ("Token authentication is enabled", "Trial task failed", "Traceback", "Syncing failed", "Resume experiment with: Tuner.restore",
                     "No artists with labels found", "(compute_merge pid=4242) trial abc failed: non-finite loss"):
            assert said in log, said
        assert "\x1b[" not in log
        assert str(raised.value) == f"no space left on DIR (Ray's and other libraries' messages: {tmp_path / LIBRARY_LOG})"
        # an interruption's one line is the resume command alone
        with pytest.raises(Interrupted) as interrupted:
            with LibraryLog(tmp_path):
                planted(tmp_path)
                raise Interrupted("Ctrl-C: the sweep is saved; continue with: robusttune resume DIR")
        assert str(interrupted.value) == "Ctrl-C: the sweep is saved; continue with: robusttune resume DIR"
        assert capfd.readouterr().err == ""
        # and nothing of it is left afterwards (Ray's own printer comes back only while its Ray runs)
        assert "robusttune_worker_lines" not in [name for name, _ in door.worker_lines_dispatcher().handlers]
        assert logging.lastResort is not None and not str(getattr(logging.lastResort, "baseFilename", "")).endswith(LIBRARY_LOG)
        assert all(not str(getattr(h, "baseFilename", "")).endswith(LIBRARY_LOG) for h in logging.getLogger("ray").handlers)
    finally:
        door.worker_lines_dispatcher().remove_handler(door.WORKER_LINES_HANDLER)


class FullStream:
    """A file on a full disk: buffered writes succeed, flushing raises ENOSPC (no file name)."""

    def write(self, text):
        return len(text)

    def flush(self):
        raise OSError(28, "No space left on device")

    def close(self):
        self.flush()


def test_a_log_whose_disk_fills_while_open_stays_silent(tmp_path, capfd):
    with LibraryLog(tmp_path) as routed:
        logging.getLogger("ray.tune").warning("first")  # opens the file
        routed._handler.stream = FullStream()  # then the disk fills
        logging.getLogger("ray.tune").error("boom")
    assert capfd.readouterr().err == ""


def test_a_log_on_a_full_disk_stays_silent(tmp_path, capfd, monkeypatch):
    """The log lives in the experiment, which may be the full place: a record it cannot write is dropped quietly."""
    import builtins

    real_open = builtins.open

    def full(file, *args, **kwargs):
        if str(file).endswith(LIBRARY_LOG):
            raise OSError(28, "No space left on device")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    capfd.readouterr()
    with LibraryLog(tmp_path):
        logging.getLogger("ray.tune").error("boom", exc_info=(OSError, OSError(28, "full"), None))
    assert capfd.readouterr().err == ""


def test_debug_leaves_everything_on_the_console(tmp_path, capfd):
    with LibraryLog(tmp_path, enabled=False):
        warnings.warn("a warning for people", UserWarning)
    assert not (tmp_path / LIBRARY_LOG).exists()
