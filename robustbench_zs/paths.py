"""Paths that come from data (annotation files, class lists, meta.json) or from flags, kept inside their root."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ZSBenchError


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` lies under ``root`` once ``..`` and absolute parts are read (lexically: links that a user put
    inside the root, such as a dataset folder linked from another disk, are the user's choice and stay allowed)."""
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.abspath(os.path.join(base, path)))
    return full == base or full.startswith(base.rstrip(os.sep) + os.sep)


def contained(root: str | os.PathLike, name: str, source: str) -> Path:
    """``root / name``, refused in one line naming ``source`` (where the name was read) when it points outside
    ``root`` (``..``, an absolute path) or holds a NUL byte."""
    if "\x00" in name or not is_inside(root, name):
        raise ZSBenchError(
            f"{source}: {name[:120]!r} points outside {root}; refusing it (a damaged or hostile file: get a clean copy)"
        )
    return Path(root) / name


def folder_name(name: str, flag: str) -> str:
    """A single folder name given on the command line: no separators, not ``.`` or ``..``, no NUL, not empty."""
    bad = not name or name in (".", "..") or "\x00" in name or "/" in name or (os.sep != "/" and os.sep in name)
    if bad or (os.altsep and os.altsep in name):
        raise ZSBenchError(f"{flag} {name!r} must be a plain folder name (no '/', not '.' or '..')")
    return name


def utf8(text: str) -> bool:
    """Whether ``text`` (a path or flag value as Python read it from the OS) is valid UTF-8: bytes that are not
    arrive as lone surrogates, which no JSON record, CSV or Markdown file written as UTF-8 can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: environment variables read as paths (checked like the flags)
PATH_VARIABLES = ("ZSBENCH_DATA", "ZSBENCH_RESULTS", "ZSBENCH_MODELS", "ZSBENCH_CACHE")


def not_utf8(values: dict[str, object]) -> str | None:
    """The one-line refusal of the first flag (``{dest: value}`` as argparse parsed them) or path variable whose
    value is not valid UTF-8, or None when all are."""
    for dest, value in values.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and not utf8(item):
                flag = "--" + dest.replace("_", "-")
                return (
                    f"{flag}: {os.fsencode(item)!r} is not valid UTF-8; records, leaderboards and checkpoints name "
                    "their paths in UTF-8 text: rename it, or pass a path whose name is UTF-8"
                )
    for var in PATH_VARIABLES:
        value = os.environ.get(var)
        if value is not None and not utf8(value):
            return f"${var}: {os.fsencode(value)!r} is not valid UTF-8; set it to a path whose name is UTF-8"
    return None
