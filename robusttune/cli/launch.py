"""``robusttune launch``: bring up a Ray cluster (cluster.yaml) and submit a sweep to it."""

from __future__ import annotations

import argparse
import sys


def cmd_launch(args: argparse.Namespace) -> int:
    from robusttune import api

    def warn(warning: str) -> None:  # a warning, not a refusal (the sizes rest on the space's largest trial)
        print(f"robusttune: warning: {warning}", file=sys.stderr)

    result = api.launch(args.space, cluster=args.cluster, storage=args.storage, name=args.name,
                        token_auth=not args.no_token_auth, max_failures=args.max_failures, dry_run=args.dry_run,
                        on_warning=warn)
    if args.dry_run:
        print("\n".join([*(f"# {line}" for line in result.sizing), *result.commands]))
    else:
        print("\n".join(result.follow_up))
    return 0


def register(commands) -> None:
    launch = commands.add_parser("launch", help="bring up a Ray cluster (cluster.yaml) and submit a sweep to it")
    launch.add_argument("space", metavar="SPACE", help="built-in space name or a YAML file (in the working directory)")
    launch.add_argument("--cluster", required=True, metavar="FILE", help="Ray cluster-launcher config (see cluster.yaml)")
    launch.add_argument("--storage", required=True, metavar="DIR", help="shared folder mounted on every node, e.g. /mnt/efs/runs")
    launch.add_argument("--name", help="experiment and job name (default: <space>-<time>)")
    launch.add_argument("--no-token-auth", action="store_true",
                        help="a cluster without Ray token authentication (default: RAY_AUTH_MODE=token, token made here)")
    launch.add_argument("--max-failures", type=int, default=3, metavar="N",
                        help="retries of a trial whose node dies, from its checkpoint (default 3: spot nodes go away)")
    launch.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    launch.set_defaults(handler=cmd_launch)
