"""The ``honed`` command: list | show ID | run ID | reproduce [ID...] | report.

Bad input (unknown id, config key or type, missing extra) prints one line on stderr and exits 2.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from honed.core.errors import HonedError

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit code 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"honed: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def default_out() -> Path:
    return Path(os.environ.get("HONED_RUNS", "runs"))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="honed", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="runs folder (default: ./runs or $HONED_RUNS)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("list", help="every registered experiment and the status of its last run")
    show = sub.add_parser("show", help="summary, config fields and presets, and claims of one method")
    show.add_argument("id")
    run = sub.add_parser("run", help="run one experiment and print the method beside its baselines")
    run.add_argument("id")
    add_run_options(run)
    run.add_argument("--json", action="store_true", help="print the Result as JSON on stdout")
    rep = sub.add_parser("reproduce", help="run several experiments (default: all), then write the report")
    rep.add_argument("ids", nargs="*")
    rep.add_argument("--jobs", "-j", type=int, default=0,
                     help="experiments run at once, each in its own process (default: the number of cores)")
    rep.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                     help="run every seed as a Ray task on this cluster (extra cluster; auto: RAY_ADDRESS, "
                          "the cluster `ray start` began here, else a local one)")
    add_run_options(rep)
    sub.add_parser("report", help="rebuild runs/report.md and runs/report.html from the result files")
    return parser


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small", choices=["smoke", "small", "full"])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); values are YAML scalars/lists")
    p.add_argument("-c", "--config", type=Path, help="YAML file of config overrides")
    p.add_argument("--seed", type=int, help="run this one seed instead of the preset's seeds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="recompute even if a finished run exists")
    p.add_argument("--out", type=Path, default=argparse.SUPPRESS, help="runs folder (default: ./runs)")


def main(argv: list[str] | None = None) -> int:
    if "RANK" in os.environ:  # under torchrun: rank 0 runs the command, the other ranks serve its DDP workers
        from honed.distributed.launch import torchrun_main, torchrun_rank

        if torchrun_rank() is not None:
            return torchrun_main(lambda: run_command(argv))
    return run_command(argv)


def run_command(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; every error becomes one line and an exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # usage errors (one line, code 2) and --help (code 0)
        return int(done.code or 0)
    try:
        from honed import commands

        return getattr(commands, f"cmd_{args.command}")(args)
    except HonedError as err:
        sys.stderr.write(f"honed: error: {one_line(err)}\n")
        return EXIT_USAGE
    except OSError as err:  # a folder that cannot be written, a full or read-only disk
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        sys.stderr.write(f"honed: error: {err.strerror or err}{where}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("honed: interrupted; finished seeds and epochs are kept and the next run resumes\n")
        return 130
    except Exception as err:  # a bug: one line by default, the traceback on request
        if os.environ.get("HONED_TRACEBACK"):
            raise
        sys.stderr.write(f"honed: internal error: {err.__class__.__name__}: {one_line(err)} "
                         f"(set HONED_TRACEBACK=1 for the traceback)\n")
        return 1


def one_line(err: BaseException) -> str:
    """The first line of an error's message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


if __name__ == "__main__":
    sys.exit(main())
