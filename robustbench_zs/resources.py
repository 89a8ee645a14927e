"""Package data files (JSON, CSV) read through :mod:`importlib.resources`, with one-line errors.

Every table of facts the package ships (the zoo, dataset metadata, the paper's tables) lives in a data file next to
the module that uses it and is read here, so that it works from a source checkout, an installed wheel or a zip alike.
A missing or malformed file is a :class:`~robustbench_zs.errors.ZSBenchError` naming the file (a broken install).

Parsed files are cached: callers share the returned objects and must not modify them.
"""

from __future__ import annotations

import csv
import io
import json
from functools import cache
from importlib import resources

from .errors import ZSBenchError

#: What to do about a missing or malformed package data file.
REINSTALL_HINT = "reinstall robustbench_zs"


def describe(package: str, name: str) -> str:
    """How error messages name a package data file: ``robustbench_zs/zoo/data/zoo.json``."""
    return f"{package.replace('.', '/')}/{name}"


def read_text(package: str, name: str) -> str:
    """The UTF-8 text of package data file ``name`` (``/``-separated, relative to ``package``'s folder)."""
    where = describe(package, name)
    try:
        node = resources.files(package)
        for part in name.split("/"):
            node = node.joinpath(part)
        return node.read_text(encoding="utf-8")
    except (ModuleNotFoundError, TypeError) as e:  # no such package, or a module that is not a package
        raise ZSBenchError(f"cannot read package data file {where}: {e}; {REINSTALL_HINT}") from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ZSBenchError(f"package data file {where} is missing or unreadable ({reason}); {REINSTALL_HINT}") from None
    except UnicodeDecodeError as e:
        raise ZSBenchError(f"package data file {where} is not UTF-8 text ({e.reason}); {REINSTALL_HINT}") from None


def read_bytes(package: str, name: str) -> bytes:
    """The bytes of package data file ``name`` as stored: not decoded, line endings untranslated (what a hash of the
    file covers)."""
    where = describe(package, name)
    try:
        node = resources.files(package)
        for part in name.split("/"):
            node = node.joinpath(part)
        return node.read_bytes()
    except (ModuleNotFoundError, TypeError) as e:  # no such package, or a module that is not a package
        raise ZSBenchError(f"cannot read package data file {where}: {e}; {REINSTALL_HINT}") from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ZSBenchError(f"package data file {where} is missing or unreadable ({reason}); {REINSTALL_HINT}") from None


@cache  # an lru_cache without a bound: the files are few and small
def read_json(package: str, name: str):
    """The parsed JSON of package data file ``name`` (see :func:`read_text`), cached."""
    text = read_text(package, name)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ZSBenchError(
            f"package data file {describe(package, name)} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            f"; {REINSTALL_HINT}"
        ) from None


@cache  # an lru_cache without a bound: the files are few and small
def read_csv(package: str, name: str) -> tuple[dict[str, str], ...]:
    """The rows of package CSV file ``name`` (header line first) as dicts, cached."""
    text = read_text(package, name)
    try:
        rows = tuple(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise ZSBenchError(
            f"package data file {describe(package, name)} is not valid CSV: {e}; {REINSTALL_HINT}"
        ) from None
    if any(None in row or None in row.values() for row in rows):  # more or fewer cells than header columns
        raise ZSBenchError(
            f"package data file {describe(package, name)} is not valid CSV: a row's cells do not match its header"
            f"; {REINSTALL_HINT}"
        )
    return rows
