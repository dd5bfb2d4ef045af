"""``robusttune launch``: bring up a Ray cluster (cluster.yaml) and submit a sweep to it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from robusttune.errors import ConfigError


def cmd_launch(args: argparse.Namespace) -> int:
    from robusttune.search.launch import check_cluster_file, check_shared_memory, execute, plan, render
    from robusttune.search.sweep import check_runnable
    from robusttune.space import load_space

    space, _ = load_space(args.space)  # fail here, not on the cluster, on a bad space
    check_runnable(space)
    cluster = Path(args.cluster)
    shm = check_shared_memory(space, check_cluster_file(cluster), source=str(cluster))
    if not args.storage.startswith("/"):
        raise ConfigError(f"--storage must be an absolute path mounted on every node (shared storage), got {args.storage!r}")
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    from robusttune.experiment import check_experiment_name

    check_experiment_name(name)
    for warning in shm.warnings:  # a warning, not a refusal (the sizes rest on the space's largest trial)
        print(f"robusttune: warning: {warning}", file=sys.stderr)
    token_auth = not args.no_token_auth
    steps = plan(args.space, cluster, name=name, storage=args.storage, token_auth=token_auth, max_failures=args.max_failures)
    lines = render(steps, token_auth=token_auth)
    if args.dry_run:
        sizing = [f"# {note}" for note in shm.notes]
        if sizing or shm.warnings:
            sizing.insert(0, "# /dev/shm per node: the data loaders' workers x prefetch x (train + eval batch) x 3 x H x W "
                             "bytes, x the trials the node runs at once, + Ray's object store")
        print("\n".join([*sizing, *lines]))
        return 0
    execute(steps, token_auth=token_auth)
    print("\n".join(line for line in lines[lines.index("# follow it"):]))
    return 0


def register(commands) -> None:
    launch = commands.add_parser("launch", help="bring up a Ray cluster (cluster.yaml) and submit a sweep to it")
    launch.add_argument("space", metavar="SPACE", help="built-in space name or a YAML file (in the working directory)")
    launch.add_argument("--cluster", required=True, metavar="FILE", help="Ray cluster-launcher config (see cluster.yaml)")
    launch.add_argument("--storage", required=True, metavar="DIR", help="shared folder mounted on every node, e.g. /mnt/efs/runs")
    launch.add_argument("--name", help="experiment and job name (default: <space>-<time>)")
    launch.add_argument("--token-auth", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    launch.add_argument("--no-token-auth", action="store_true",
                        help="a cluster without Ray token authentication (default: RAY_AUTH_MODE=token, token made here)")
    launch.add_argument("--max-failures", type=int, default=3, metavar="N",
                        help="retries of a trial whose node dies, from its checkpoint (default 3: spot nodes go away)")
    launch.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    launch.set_defaults(handler=cmd_launch)
