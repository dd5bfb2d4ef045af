"""``launch``: bring a Ray cluster up (a cluster-launcher YAML) and submit a sweep to it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robusttune.bounds import check_max_failures
from robusttune.errors import ConfigError, ParameterError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchResult:
    """The commands of a launch (all of them, in order), the cluster's ``/dev/shm`` sizing notes and warnings,
    and whether they were run (``dry_run`` only prints them)."""

    commands: list[str]
    sizing: list[str]
    warnings: list[str]
    executed: bool

    @property
    def follow_up(self) -> list[str]:
        """The commands left to the user once the sweep is submitted (follow, status, report, resume, down)."""
        return self.commands[self.commands.index("# follow it"):]


SIZING_RULE = ("/dev/shm per node: the data loaders' workers x prefetch x (train + eval batch) x 3 x H x W bytes, "
               "x the trials the node runs at once, + Ray's object store")


def launch(space: str, *, cluster: str | os.PathLike[str], storage: str, name: str | None = None,
           token_auth: bool = True, max_failures: int = 3, dry_run: bool = False,
           on_warning: Callable[[str], None] = log.warning) -> LaunchResult:
    """Start (or update) the cluster of ``cluster`` with ``ray up`` and submit a sweep of ``space`` to it as a Ray
    job writing to ``storage`` (an absolute folder every node mounts); ``max_failures`` retries a trial whose node
    dies from its checkpoint. Everything that can be checked here (the space, the cluster file against Ray's
    schema, its AMI, image, token auth and node types against the space's trials, each node type's ``/dev/shm``,
    the name) is checked before anything runs: a cluster that cannot run the trials (``latest_dlami``, no robusttune
    on the nodes, a trial that fits no node, a data-parallel trial that would span nodes without EFA) is refused with
    a ``ConfigError``; what is doubtful but not refused (a ``/dev/shm`` or GPU smaller than the trials may need, a
    short idle timeout) goes to ``on_warning`` first."""
    from robusttune.experiment import check_experiment_name
    from robusttune.search.cluster_check import check_launcher
    from robusttune.search.launch import check_cluster_file, check_shared_memory, execute, plan, render
    from robusttune.search.sweep import check_runnable
    from robusttune.space import load_space

    loaded, _ = load_space(space)  # fail here, not on the cluster, on a bad space
    check_runnable(loaded)
    check_max_failures(max_failures)
    if not storage.startswith("/"):
        raise ParameterError("storage", f"must be an absolute path mounted on every node (shared storage), got {storage!r}")
    cluster_file = Path(cluster)
    config = check_cluster_file(cluster_file)
    # what the file must get right before a trial runs (AMI, image, token auth, trials that fit a node, EFA for trials
    # that span nodes): errors refuse, doubts warn (robusttune.search.cluster_check)
    findings = check_launcher(config, loaded, token_auth=token_auth, source=str(cluster_file))
    if findings.errors:
        raise ConfigError(findings.errors[0])
    shm = check_shared_memory(loaded, config, source=str(cluster_file))
    from robusttune.api.common import cache_directory
    from robusttune.search.memory import gpu_memory_of
    from robusttune.search.plan import check_space_fits

    gpu_memory, gpu = gpu_memory_of(cluster=config)  # the smallest GPU of the file's node types
    check_space_fits(loaded, cache_directory(None), gpu_memory=gpu_memory, gpu=gpu)
    name = name or f"{loaded.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_experiment_name(name)
    steps = plan(space, cluster_file, name=name, storage=storage, token_auth=token_auth, max_failures=max_failures)
    sizing = [SIZING_RULE, *shm.notes] if shm.notes or shm.warnings else []
    result = LaunchResult(render(steps, token_auth=token_auth), sizing, [*findings.warnings, *shm.warnings],
                          executed=not dry_run)
    for warning in result.warnings:
        on_warning(warning)
    if not dry_run:
        execute(steps, token_auth=token_auth)
    return result
