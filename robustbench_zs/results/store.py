"""Records on disk: ``<out>/records/<method>/<dataset>/<threat>-<key12>.json``, written atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import ZSBenchError
from .schema import validate


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` and prove it can be written, or raise a one-line ZSBenchError."""
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
    return folder


def atomic_write_json(path: Path, obj: object) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if e.errno == errno.ENOSPC:
            raise ZSBenchError(f"no space left on device while writing {path}") from None
        raise


@contextlib.contextmanager
def record_lock(path: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on one record while it is computed, so that two runs sharing a results folder never
    compute or write the same record at once (the second waits, then finds the record written).

    The lock is ``fcntl.flock`` on a hidden ``.<record>.lock`` file beside the record; the kernel releases it when
    the process dies, even by SIGKILL, so a crashed run never leaves a stale lock. The lock files stay (deleting
    them would race with a waiting process); they are empty. Without ``fcntl`` (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.stem}.lock")
    with open(lock_path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(f"another zsbench process is computing {path.name}; waiting for it")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class RecordStore:
    """The records folder of one results directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / "records"

    def path_for(self, method: str, dataset: str, slug: str, key: str) -> Path:
        return self.root / method / dataset / f"{slug}-{key[:12]}.json"

    def exists(self, path: Path, key: str) -> bool:
        """True if ``path`` holds a valid record with exactly this key (else it is recomputed and overwritten)."""
        if not path.is_file():
            return False
        try:
            return validate(json.loads(path.read_text(encoding="utf-8")))["record_key"] == key
        except (ValueError, OSError, UnicodeDecodeError):
            return False

    def read(self, path: Path) -> dict:
        return self.read_path(path)

    @staticmethod
    def read_path(path: Path) -> dict:
        """One record, validated (ValueError names what is wrong)."""
        return validate(json.loads(Path(path).read_text(encoding="utf-8")))

    def write(self, path: Path, record: dict) -> None:
        atomic_write_json(path, validate(record))

    def iter_records(self) -> Iterator[tuple[Path, dict]]:
        """Every valid record; invalid files are skipped with a warning naming them."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*.json")):
            try:
                record = validate(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, OSError, UnicodeDecodeError) as e:
                warnings.warn(f"skipping invalid record {path}: {e}", stacklevel=2)
                continue
            yield path, record
