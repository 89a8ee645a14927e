"""Where a number came from: package version, git commit, library versions, file hashes, default paths."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from .version import __version__

_PKG_DIR = Path(__file__).resolve().parent


def default_data_root() -> Path:
    """``$ZSBENCH_DATA`` or ``./datasets``."""
    return Path(os.environ.get("ZSBENCH_DATA", "datasets"))


def default_results_dir() -> Path:
    """``$ZSBENCH_RESULTS`` or ``./results``."""
    return Path(os.environ.get("ZSBENCH_RESULTS", "results"))


def default_models_dir() -> Path:
    """Where trained checkpoints go: ``$ZSBENCH_MODELS`` or ``./models``."""
    return Path(os.environ.get("ZSBENCH_MODELS", "models"))


def default_cache_dir() -> Path:
    """``$ZSBENCH_CACHE`` or ``~/.cache/robustbench_zs`` (text heads and other derived data)."""
    env = os.environ.get("ZSBENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustbench_zs"


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file; memoized on (path, size, mtime), so a checkpoint is read once per process."""
    st = os.stat(path)
    return _sha256_file(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def sha256_tensors(named: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]]) -> str:
    """Hash of named tensors (name, dtype, shape and bytes), independent of device and insertion order."""
    items = sorted(named.items() if isinstance(named, dict) else named)
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, str | bool | None]:
    """Commit of the source tree the package runs from (None when installed from a wheel)."""
    root = _PKG_DIR.parent
    if not (root / ".git").exists():
        return {"sha": None, "dirty": None}
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "robustbench_zs"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"sha": sha or None, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def software() -> dict[str, object]:
    """Versions of everything that can move a number."""
    git = git_info()
    return {
        "robustbench_zs": __version__,
        "git_sha": git["sha"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip_torch": _version("open_clip_torch"),
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "platform": f"{platform.system()}-{platform.machine()}",
    }


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s on Linux), else what ``platform`` knows of it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """The name of the device a record was computed on: the GPU's (``NVIDIA H100 80GB HBM3``), or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_model()
    return device.type


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
