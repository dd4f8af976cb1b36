"""``fastdistill demo``: the offline end-to-end run that is the README's main command."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from fastdistill.demo.config import DemoConfig
from fastdistill.demo.report import summary_table
from fastdistill.demo.run import DemoFailed, run_demo


def main(argv: list[str] | None = None, command: str = "demo") -> int:
    """Entry point of ``fastdistill demo``: 0 when the run produced a report, 1 (and why, on stderr) when a stage
    produced nothing usable (:class:`~fastdistill.demo.run.DemoFailed`)."""
    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="fastdistill-demo", help="where the report, plot and data go")
    parser.add_argument("--quick", action="store_true", help="reduced size (a minute or two; used by the tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch CPU threads for training and generation (default: {DemoConfig.threads}; "
                             "0: torch's choice)")
    args = parser.parse_args(argv)
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = replace(cfg, seed=args.seed)
    if args.threads is not None:
        cfg = replace(cfg, threads=args.threads)
    try:
        report = run_demo(args.output_dir, cfg)
    except DemoFailed as err:
        from fastdistill import cli

        if cli.DEBUG:  # --debug: the traceback instead of the one-line message
            raise
        sys.stderr.write(f"fastdistill {command}: failed: {err}\n")
        return 1
    sys.stdout.write(summary_table(report) + f"\n\nwall time {report['wall_time_s']:.0f} s; report: "
                     f"{Path(args.output_dir) / 'report.md'}\n")
    return 0
