"""Files written whole or not at all: a temporary file beside the target, fsync, then one rename.

Every writer of the package that produces a file a user keeps (tables, figures, JSON reports, metadata) goes through
:func:`replacing`: a kill or a full disk at any instant leaves either the previous file or the new one, never a torn
one, no temporary file stays behind, and an OSError (full disk, read-only folder, a folder where the file should be)
is the one-line :class:`~robustbench_zs.errors.ZSBenchError` of :func:`~robustbench_zs.errors.write_error`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OUT_HINT, temp_file, writing


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, instead: str = OUT_HINT) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; when the block ends it is synced to disk and
    renamed over ``path`` (its parent folders are created). On any error the temporary file is removed and
    ``path`` is left as it was.

    The temporary name is ``.<name>.<pid>.<random>.tmp``: the pid lets a later run tell the leftovers of a killed
    writer from a live one's (:func:`~robustbench_zs.results.store.remove_stale_temps`), and writers that choose a
    format from the suffix (matplotlib, pandas) must be told the format.
    """
    path = Path(path)
    with writing(path, instead=instead):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path.parent, prefix=f".{path.name}.{os.getpid()}.")
        os.close(fd)
        with writing(path, instead=instead, cleanup=(tmp,)):
            yield Path(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                _fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)


def _fsync(fd: int) -> None:
    """Flush the file ``fd`` to the disk (where a full disk shows up at the latest); tests replace it to simulate
    one."""
    os.fsync(fd)


def write_text(path: str | os.PathLike, text: str, *, instead: str = OUT_HINT) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (see :func:`replacing`); returns ``path``."""
    with replacing(path, instead=instead) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` (made beside ``target``) in ``target``'s place: a folder that was there is
    moved into a temporary folder, then removed, so a reader sees the old folder or the new one, never a mix."""
    if target.exists() or target.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, trash / "old")
        os.replace(new, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, target)
