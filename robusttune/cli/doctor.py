"""``robusttune doctor SPACE``: one line per check before GPU-hours are spent; exit 1 on any blocker."""

from __future__ import annotations

import argparse

from robusttune.cli.output import add_common, emit

MARKS = {"ok": "ok", "warn": "WARN", "blocker": "BLOCKER", "skip": "-"}


def cmd_doctor(args: argparse.Namespace) -> int:
    from robusttune import api

    found = api.doctor(args.space, address=args.address, storage=args.storage, cache_dir=args.cache_dir,
                       gpu_memory=args.gpu_memory, all_reduce=not args.no_all_reduce)

    def human() -> None:
        print(f"doctor: space '{args.space}' on {found.where}")
        width = max((len(c["name"]) for c in found.checks), default=8)
        for check in found.checks:
            node = f"[{check['node']}] " if check["node"] else ""
            print(f"  {MARKS[check['status']]:<8} {check['name']:<{width}}  {node}{check['detail']}")
        print(f"{found.blockers} blocker(s)" if found.blockers else "no blockers")

    emit(found.to_dict(), args.json, human)
    return 1 if found.blockers else 0


def register(commands) -> None:
    doctor = commands.add_parser("doctor", help="check CUDA, driver, GPU memory, all-reduce, /dev/shm, disk, weights, "
                                 "data and loader before a sweep (exit 1 on any blocker)")
    add_common(doctor)
    doctor.add_argument("space", metavar="SPACE", help="built-in space name or a YAML file")
    doctor.add_argument("--address", metavar="ADDR", help="run the checks as Ray tasks on each node of this cluster "
                        "that can run a trial")
    doctor.add_argument("--storage", default="runs", metavar="DIR", help="where experiments go (free disk)")
    doctor.add_argument("--gpu-memory", type=float, metavar="GB", help="check the peaks against this GPU memory")
    doctor.add_argument("--no-all-reduce", action="store_true", help="skip the two-rank all-reduce")
    doctor.set_defaults(handler=cmd_doctor)
