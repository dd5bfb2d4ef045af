"""Shared fixtures: a per-session cache directory and the small, fast test world."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_world_config():
    from robusttune.config import tiny_test_world

    return tiny_test_world()


@pytest.fixture(scope="session")
def tiny_prepared(tiny_world_config, cache_dir):
    from robusttune.training.mini_world import prepare_world

    return prepare_world(tiny_world_config, cache_dir)


@pytest.fixture(scope="session")
def default_world_data(cache_dir):
    from robusttune.config import default_world
    from robusttune.data.mini.world import load_world

    return load_world(default_world(), cache_dir)
