"""Errors that reach the user as one line (the CLI turns them into exit code 2, without a traceback)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator


class ZSBenchError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class UnknownNameError(ZSBenchError, KeyError):
    """A name that is not in a registry; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(ZSBenchError):
    """A dataset root that is missing or does not have the expected on-disk layout."""


#: errno values of a write that the place cannot take: full, over quota (fix: free space), read-only, not permitted
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

#: what to do instead, per place we write to (the default: the results folder of ``zsbench run``)
OUT_HINT = "choose another --out"


def write_error(path: str | os.PathLike, error: OSError, instead: str = OUT_HINT) -> ZSBenchError:
    """The one-line error for a write to ``path`` that failed with ``error``.

    ``no space left on device while writing <path>; free space or <instead>`` for a full disk or quota,
    ``read-only file system while writing <path>; <instead>`` for a read-only or forbidden one
    (also permission denied / operation not permitted), and ``cannot write <path>: <reason>; <instead>`` otherwise.
    """
    code = getattr(error, "errno", None)
    if code in NO_SPACE or code in NOT_WRITABLE:
        reason = os.strerror(code).lower()
        fix = f"free space or {instead}" if code in NO_SPACE else instead
        return ZSBenchError(f"{reason} while writing {path}; {fix}")
    reason = error.strerror or str(error) or type(error).__name__
    return ZSBenchError(f"cannot write {path}: {reason}; {instead}")


@contextlib.contextmanager
def writing(
    path: str | os.PathLike, *, instead: str = OUT_HINT, cleanup: tuple[str | os.PathLike, ...] = ()
) -> Iterator[None]:
    """Run a write to ``path``: on any error the ``cleanup`` files (temporaries) are removed, and an OSError (a full,
    read-only or forbidden disk, a path through a file...) becomes the one-line :class:`ZSBenchError` of
    :func:`write_error`; other errors propagate unchanged."""
    try:
        yield
    except BaseException as e:
        for tmp in cleanup:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e, instead) from None
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the platform says it (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open`` would (0666 & ~umask); some writers (safetensors) create 0600."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~_umask())


def temp_file(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder`` whose file then follows the user's umask (0666 & ~umask, as ``open``
    gives) rather than mkstemp's 0600: the file it becomes by rename is shared like any other tool's output."""
    fd, path = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, path
