"""A process given GPUs it cannot use fails at once, in one line; ``auto`` falls back to the CPU only where no GPU was
given; ``train --workers N`` needs N GPUs unless it says ``--device cpu``. (On a machine whose torch sees a GPU the
planted cases cannot be planted: they are skipped.)"""

import os
import stat

import pytest
import torch
from helpers import assert_one_line_exit_2, invoke

from robusttune.errors import ConfigError
from robusttune.training import device
from robusttune.training.device import check_gpus, data_parallel_gpus, resolve_device, visible_gpu_ids

no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here: the failure cannot be planted")


def test_what_counts_as_given_gpus():
    assert visible_gpu_ids({}) == ()
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == ()  # Ray's value for a task without GPUs
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == ()
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2,3"}) == ("2", "3")
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "GPU-5d3e"}) == ("GPU-5d3e",)


@no_gpu_here
def test_auto_falls_back_to_the_cpu_only_without_given_gpus(monkeypatch, caplog):
    monkeypatch.setattr(device, "_said_cpu", False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level("INFO", logger="robusttune.training.device"):
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device("auto") == torch.device("cpu")
    assert [r.getMessage() for r in caplog.records] == ["device auto: no GPU was given to this process; running on the CPU"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # given one (as Ray gives a trial), and torch sees none
    with pytest.raises(ConfigError) as failed:
        resolve_device("auto")
    line = str(failed.value)
    assert "\n" not in line and line.startswith("device 'auto': CUDA_VISIBLE_DEVICES assigned GPU(s) 0, but no CUDA "
                                                "device is visible to torch")
    assert f"(built for CUDA {torch.version.cuda})" in line and "install an NVIDIA driver" in line
    assert "or run on the CPU (resources.gpu: 0 or device: cpu)" in line
    assert resolve_device("cpu") == torch.device("cpu")  # said: the CPU
    with pytest.raises(ConfigError, match="device 'cuda': CUDA_VISIBLE_DEVICES assigned GPU.s. 0, but no CUDA device"):
        resolve_device("cuda")


@no_gpu_here
def test_the_line_names_rays_ids_and_the_drivers_versions(monkeypatch, tmp_path):
    check_gpus([], source="Ray", what="trial t1")  # nothing given: nothing to say
    fake = tmp_path / "bin" / "nvidia-smi"  # an old driver, as on Ray's 'latest_dlami' (CUDA 11)
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '| NVIDIA-SMI 460.106.00   Driver Version: 460.106.00   CUDA Version: 11.2     |'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert device.driver_version() == ("460.106.00", "11.2")
    with pytest.raises(ConfigError) as failed:
        check_gpus(["0"], source="Ray", what="trial t1")
    line = str(failed.value)
    assert line.startswith("trial t1: Ray assigned GPU(s) 0, but no CUDA device is visible to torch")
    assert "; NVIDIA driver 460.106.00 (CUDA 11.2); install an NVIDIA driver" in line and len(line) < 450


@no_gpu_here
def test_train_with_workers_needs_as_many_gpus_unless_told_cpu(tmp_path, cache_dir):
    assert data_parallel_gpus(1, "auto") is False and data_parallel_gpus(2, "cpu") is False
    with pytest.raises(ConfigError, match=r"^workers 2: each data-parallel worker trains on its own GPU, but torch sees "
                                          r"0 GPU\(s\) here; set `device` to cpu to train them on CPUs"):
        data_parallel_gpus(2, "auto")
    out = tmp_path / "out"
    result = invoke("train", "--workers", "2", "--steps", "2", "--out", out, cache_dir=cache_dir)
    assert_one_line_exit_2(result, "workers 2: each data-parallel worker trains on its own GPU")
    assert not out.exists()
