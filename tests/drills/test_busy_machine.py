"""A busy machine: a local Ray's workers (trials, baselines, the confirmation) run at the driver's priority with
OpenMP's passive wait policy, so a competing process costs a trial its fair share (benchmarks/busy_machine.py
measures the images/s)."""

import os

import pytest


@pytest.mark.slow
def test_a_local_rays_workers_are_not_niced_and_wait_passively(tmp_path, monkeypatch):
    import ray

    from robusttune.search.stopping import StopSignals
    from robusttune.search.sweep import _init_ray

    if ray.is_initialized():
        pytest.skip("a Ray another test started: its workers' settings are its own")
    for name in ("RAY_worker_niceness", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    try:
        with StopSignals(tmp_path) as stop:
            _init_ray(None, stop)

            @ray.remote(num_cpus=1)
            def settings():
                return os.nice(0), os.environ.get("OMP_WAIT_POLICY")

            assert ray.get(settings.remote(), timeout=120) == (os.nice(0), "PASSIVE")
    finally:
        os.environ.pop("RAY_worker_niceness", None)  # set for the raylet by _init_ray
    assert not ray.is_initialized()
