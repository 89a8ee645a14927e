"""Real small file systems for the tests of full and read-only disks (tmpfs; needs root and mount(8), else the test
is skipped): no mocking of the writes, so every writer meets ENOSPC or EROFS wherever the kernel raises it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(folder: Path, *options: str, size_kb: int = 64) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` kB mounted at ``folder`` for the block (``options`` such as ``ro`` added)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    opts = ",".join((f"size={size_kb}k", *options))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave_kb: int = 0) -> Path:
    """Write ``folder/filler`` until at most ``leave_kb`` kB are free on its disk; returns the filler's path."""
    path = folder / "filler"
    path.unlink(missing_ok=True)  # the space an earlier filler holds counts as free
    stat = os.statvfs(folder)
    want = max(stat.f_bavail * stat.f_frsize - leave_kb * 1024, 0)
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while want > 0:
            chunk = min(want, 1 << 20)
            f.write(b"\0" * chunk)
            want -= chunk
    return path


def temporaries(folder: Path) -> list[Path]:
    """Files and folders a writer left behind: any name with ``tmp`` in it (ours all have)."""
    return [p for p in folder.rglob("*") if "tmp" in p.name]
