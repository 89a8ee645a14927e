"""The ``zsbench`` command line (``main``); each subcommand lives in a module of its own here."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
