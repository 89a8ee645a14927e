"""The ``zsbench`` command line: one module per subcommand, each adding its parser and its handler.

``main(argv)`` takes a list, so tests drive it in process."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

from ..errors import ZSBenchError
from ..paths import not_utf8
from ..version import __version__
from . import bench, compare, datasets, leaderboard, listing, models, reproduce, run, site, status, submit, train, world
from .args import EXIT_USAGE, Parser

#: the subcommands in the order ``zsbench --help`` lists them
SUBCOMMANDS = (
    run,
    train,
    status,
    listing,
    datasets,
    leaderboard,
    compare,
    reproduce,
    submit,
    site,
    models,
    bench,
    world,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="zsbench", description="Benchmark of adversarially robust zero-shot CLIP.")
    p.add_argument("--version", action="version", version=f"robustbench_zs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in its traceback."""
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"zsbench: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded with a sweep (zsbench run --launcher)
    handler = args.handler
    refused = not_utf8(vars(args))
    if refused:
        print(f"zsbench: error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            code = handler(args)
            sys.stdout.flush()  # a pipe buffers the output: a reader gone away shows here, not at exit
            return code
    except ZSBenchError as e:
        print(f"zsbench: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("zsbench: interrupted; every record finished so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``zsbench ... | head``): stop quietly, as a shell tool does
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush finds no closed pipe
        return 128 + 13  # SIGPIPE's exit status
