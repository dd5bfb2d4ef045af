"""``robusttune report``: the Pareto-front report of an experiment (HTML, PNG, CSV)."""

from __future__ import annotations

import argparse

from robusttune.cli.output import add_common, emit


def cmd_report(args: argparse.Namespace) -> int:
    from robusttune import api

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    result = api.report(args.experiment, out=args.out, formats=formats, logit_axes=args.logit_axes,
                        gallery=not args.no_gallery, cache_dir=args.cache_dir)

    def human() -> None:
        for name, path in result.files.items():
            print(f"{name:<16} {path}")
        print(f"report written in {result.seconds:.1f} s")

    emit({k: v for k, v in result.summary.items() if k != "hypervolume_over_trials"}, args.json, human)
    return 0


def register(commands) -> None:
    report = commands.add_parser("report", help="write the Pareto-front report of an experiment (HTML, PNG, CSV)")
    report.add_argument("experiment", metavar="EXPDIR")
    report.add_argument("--out", metavar="DIR", help="output folder (default: EXPDIR/report)")
    report.add_argument("--format", default="html,png,csv", metavar="LIST", help="any of html,png,csv (default: all)")
    report.add_argument("--logit-axes", action="store_true", help="logit-scaled accuracy axes, as in the WiSE-FT paper")
    report.add_argument("--no-gallery", action="store_true", help="skip the counterfactual gallery (needs torch and the checkpoints)")
    add_common(report)
    report.set_defaults(handler=cmd_report)
