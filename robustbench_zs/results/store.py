"""Records on disk: ``<out>/records/<method>/<dataset>/<threat>-<key12>.json``, written atomically."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from ..atomic import write_text
from ..errors import OUT_HINT, ZSBenchError
from .record import Record, validate


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` and prove it can be written, or raise a one-line ZSBenchError.

    Temporary files that a killed run left in its records (see :func:`remove_stale_temps`) are removed on the way.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise ZSBenchError(
            f"cannot write to output directory {folder}: {reason}; pass --out DIR with a writable folder"
        ) from None
    remove_stale_temps(folder / "records")
    return folder


#: temporary names: ``.<record>.json.<pid>.<random>.tmp`` (records, :func:`robustbench_zs.atomic.replacing`) and
#: ``.<stem>.<pid>.tmp.npz`` (progress files)
_TEMP_RE = re.compile(r"^\..+\.(\d+)\.(?:[a-z0-9_]+\.tmp|tmp\.npz)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (EPERM), or no such pid on this system
        return True
    return True


def remove_stale_temps(folder: Path, min_age_s: float = 60.0, prefix: str = "", recursive: bool = True) -> list[Path]:
    """Remove the temporary files under ``folder`` (names starting with ``prefix``) whose writer is gone: a process of
    this machine that is no longer running (the pid is in the name), and older than ``min_age_s`` (a write takes
    milliseconds, so a live writer on another machine sharing the folder is never touched). Returns what was removed.
    """
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    now = time.time()
    pattern = f"{glob.escape(prefix) if prefix else '.'}*tmp*"
    for p in Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern):
        m = _TEMP_RE.match(p.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime >= min_age_s:
                p.unlink()
                removed.append(p)
    return removed


def _remove_temps_of(path: Path) -> None:
    """Remove every temporary file of the record ``path`` (its JSON and its progress file): called with the record's
    lock held, so no live process is writing them; they are what a killed run left."""
    for p in path.parent.glob(f".{glob.escape(path.stem)}.*"):
        if p.name.endswith((".tmp", ".tmp.npz")):
            with contextlib.suppress(OSError):
                p.unlink()


def atomic_write_json(path: Path, obj: object, instead: str = OUT_HINT) -> None:
    """Write ``obj`` as a record file (JSON, indent 1, UTF-8) whole or not at all, through
    :func:`robustbench_zs.atomic.write_text`: a temporary file beside ``path``, fsync, then rename.

    A full, read-only or forbidden disk is a one-line :class:`ZSBenchError` (``instead``: what to do about it), and
    the temporary file is removed on any error.
    """
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n", instead=instead)


@contextlib.contextmanager
def record_lock(path: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on one record while it is computed, so that two runs sharing a results folder never
    compute or write the same record at once (the second waits, then finds the record written).

    The lock is ``fcntl.flock`` on a hidden ``.<record>.lock`` file beside the record; the kernel releases it when
    the process dies, even by SIGKILL, so a crashed run never leaves a stale lock. The holder removes the file
    before it lets go, so a finished run leaves none behind; a waiter that then wins the lock on the removed file
    (or on one replaced since) sees that the path no longer names the file it holds, and starts over on the file
    there now. Only a process killed while holding a lock leaves its empty file, which the next run on that record
    removes. Without ``fcntl`` (Windows) no lock is taken.
    """
    try:
        import fcntl  # POSIX only: a function-local import so that Windows runs without locks
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.stem}.lock")
    told = False
    while True:
        f = open(lock_path, "a+b")  # noqa: SIM115 - closed below, or on the way out
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not told:
                    on_wait(f"another zsbench process is computing {path.name}; waiting for it")
                    told = True
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                here = os.stat(lock_path)
            except FileNotFoundError:
                here = None
            mine = os.fstat(f.fileno())
        except BaseException:
            f.close()
            raise
        if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
            break
        f.close()  # the holder before us removed this file: lock the one at the path now
    try:
        _remove_temps_of(path)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


class RecordStore:
    """The records folder of one results directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / "records"

    def path_for(self, method: str, dataset: str, slug: str, key: str) -> Path:
        return self.root / method / dataset / f"{slug}-{key[:12]}.json"

    def exists(self, path: Path, key: str) -> bool:
        """True if ``path`` holds a valid record with exactly this key (else it is recomputed and overwritten).

        Something that is no file where the record goes (a folder, a FIFO) is refused before anything is computed.
        """
        if not path.is_file():
            if os.path.lexists(path):
                raise ZSBenchError(
                    f"cannot write {path}: a folder or other non-file is in its place; move it away or choose "
                    "another --out"
                )
            return False
        try:
            return self.read_path(path).record_key == key
        except (ValueError, OSError):
            return False

    def read(self, path: Path) -> Record:
        return self.read_path(path)

    @staticmethod
    def read_path(path: Path) -> Record:
        """One record, validated (ValueError names what is wrong: bad JSON, or the field and what it should be)."""
        path = Path(path)
        if not path.is_file():  # a FIFO would block, a device never end: only regular files are records
            raise ValueError("not a regular file (a FIFO, device or folder)")
        try:
            return Record.from_json(json.loads(path.read_text(encoding="utf-8")), path)
        except RecursionError:  # json.loads of thousands of nested brackets
            raise ValueError("nested too deeply to be a record") from None

    def write(self, path: Path, record: Record) -> None:
        """Write ``record`` to ``path`` (checked first: an invalid record is a ValueError, and nothing is written)."""
        atomic_write_json(path, validate(record.to_json()))

    def iter_records(self) -> Iterator[Record]:
        """Every valid record, in path order, each with its ``path``; invalid files are skipped with a warning
        naming them."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*.json")):
            try:
                record = self.read_path(path)
            except (ValueError, OSError) as e:  # UnicodeDecodeError and json's errors are ValueErrors
                warnings.warn(f"skipping invalid record {path}: {e}", stacklevel=2)
                continue
            yield record
