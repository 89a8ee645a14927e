"""Argument types and the parser class shared by every subcommand: one place, so that no subcommand imports another."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from ..errors import ZSBenchError
from ..launch import LaunchOptions, parse_time_limit
from ..progress import DEFAULT_EVERY_S, EVERY_ENV
from ..provenance import default_results_dir

EXIT_USAGE = 2
#: the largest evaluation batch accepted (far above what any accelerator holds at 224 px; larger is a typo)
MAX_BATCH = 65536


class Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``, the same in every command that runs long loops."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bars (default: a bar on a terminal; without one, as under nohup or Slurm, a line with count, "
        f"rate and ETA every {DEFAULT_EVERY_S:g} s, or every {EVERY_ENV} seconds)",
    )


def split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ZSBenchError(f"--{what} is empty; give a comma-separated list")
    return items


def _number(text: str) -> float:
    if not text or "_" in text:  # float() takes "1_0"; a radius written so is a typo
        raise ValueError
    return float(text)


def _radius_255(item: str, flag: str) -> tuple[float, bool]:
    """One radius in units of 1/255 and whether its unit was spelled out: ``8/255`` (any ``a/b``) is the fraction of
    the pixel range a/b; a plain number is in units of 1/255."""
    example = f"e.g. --{flag} 1,4 or --{flag} 1/255,4/255"
    num, slash, den = item.partition("/")
    try:
        a = _number(num.strip())
        b = _number(den.strip()) if slash else 255.0
    except ValueError:
        raise ZSBenchError(f"--{flag} {item!r} is not a number or a fraction; {example}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a < 0:
        raise ZSBenchError(f"--{flag} {item} is negative or not finite; {example}")
    if b <= 0:
        raise ZSBenchError(f"--{flag} {item} divides by {den.strip()}; {example}")
    units = a * 255.0 / b if slash else a
    if units > 255:
        raise ZSBenchError(f"--{flag} {item} is over 255/255, the whole pixel range; {example}")
    return units, bool(slash)


def radii_255(value: str, flag: str = "eps") -> list[float]:
    """``--eps``-like values in units of 1/255, in the order given: ``1,4`` and ``1/255,4/255`` are the same radii.

    Plain numbers are in units of 1/255. A list whose values all lie below 1 (``0.03``) is refused unless the unit is
    spelled out (``0.03/255``): it reads as a fraction of the pixel range (0.03 = 7.65/255), and guessing either way
    could put a wrong number in a paper.
    """
    items = [v.strip() for v in str(value).split(",")]
    if not any(items):
        raise ZSBenchError(f"--{flag} is empty; give radii in units of 1/255 or as fractions, e.g. --{flag} 1,4")
    parsed = [_radius_255(item, flag) for item in items]
    plain = [(item, units) for item, (units, explicit) in zip(items, parsed, strict=True) if not explicit]
    if plain and all(units < 1 for _, units in plain) and any(units > 0 for _, units in plain):
        item, units = next((i, u) for i, u in plain if u > 0)
        as_fraction = units * 255
        raise ZSBenchError(
            f"--{flag} {value} is ambiguous: plain numbers are in units of 1/255, so {item} would mean {item}/255, "
            f"but it reads like the fraction {item} = {as_fraction:.4g}/255; write --{flag} {round(as_fraction)}/255 "
            f"(or {round(as_fraction)}) for that, or --{flag} {item}/255 if you mean {item}/255"
        )
    return [units for units, _ in parsed]


def parse_eps(value: str, flag: str = "eps") -> list[float]:
    """``--eps`` -> radii in [0, 1] pixel units, sorted, without repeats (see :func:`radii_255`)."""
    return sorted({units / 255 for units in radii_255(value, flag)})


def one_radius_255(value: str, flag: str) -> float:
    """One ``--eps``-like value (``--train-eps``, ``--step-size``) in units of 1/255 (see :func:`radii_255`)."""
    if "," in str(value):
        raise ZSBenchError(f"--{flag} takes one value (in units of 1/255, or a fraction such as 1/255)")
    (units,) = radii_255(value, flag)
    return units


def parse_step_size(value: str) -> float:
    step = one_radius_255(value, "step-size") / 255
    if step == 0:
        raise ZSBenchError("--step-size must be positive")
    return step


def positive_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int | None:
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ZSBenchError(f"--{name} {value!r} is not an integer") from None
    if v < minimum:
        raise ZSBenchError(f"--{name} {v} must be at least {minimum}")
    if maximum is not None and v > maximum:
        raise ZSBenchError(f"--{name} {v} must be at most {maximum}")
    return v


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ZSBenchError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def results_with_records(out: str | None) -> Path:
    """The results folder of ``--out`` (default $ZSBENCH_RESULTS or ./results), which must hold records already."""
    folder = Path(out) if out else default_results_dir()
    if not (folder / "records").is_dir():
        raise ZSBenchError(f"no records under {folder / 'records'}; run `zsbench run --out {folder}` first")
    return folder


#: the options of ``--launcher`` (flag name, attribute), refused without it
_LAUNCH_FLAGS = (
    "partition",
    "account",
    "qos",
    "gpus_per_job",
    "cpus_per_job",
    "mem_gb",
    "time_limit",
    "max_parallel",
    "wait",
)
#: options that only Slurm reads: refused with ``--launcher local``, where they would do nothing
_SLURM_ONLY = ("partition", "account", "qos", "max_parallel")


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """``--launcher slurm|local`` and its options, the same for ``run`` and ``train``."""
    g = parser.add_argument_group("cluster (submitit)")
    g.add_argument(
        "--launcher",
        choices=["slurm", "local"],
        help="submit the work as jobs through submitit instead of running it here: slurm (a job array, one job per "
        "method and dataset) or local (the same jobs as processes of this machine); zsbench status --out shows them",
    )
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--account", help="Slurm account")
    g.add_argument("--qos", help="Slurm quality of service")
    g.add_argument("--gpus-per-job", help="GPUs per job, one process each (default 1 with slurm, 0 with local)")
    g.add_argument("--cpus-per-job", help="CPU cores per job (default: the cluster's)")
    g.add_argument("--mem-gb", help="memory per job in GB (default: the cluster's)")
    g.add_argument(
        "--time-limit",
        help="wall-clock limit per job (required with slurm): minutes (90), 90m, 4h, 2d, H:MM:SS or D-HH:MM:SS",
    )
    g.add_argument("--max-parallel", help="at most N jobs of the array at once (Slurm's array throttle)")
    g.add_argument("--wait", action="store_true", default=None, help="wait for the jobs, then write the leaderboard")


def launch_options(args: argparse.Namespace):
    """The :class:`~robustbench_zs.launch.LaunchOptions` of ``--launcher`` (None without it); its options without
    it, or Slurm's options with ``--launcher local``, are refused rather than ignored."""
    given = [f for f in _LAUNCH_FLAGS if getattr(args, f, None) is not None]
    if args.launcher is None:
        if given:
            raise ZSBenchError(f"--{given[0].replace('_', '-')} needs --launcher slurm (or local); drop it to run here")
        return None
    if args.launcher == "local":
        slurm = [f for f in given if f in _SLURM_ONLY]
        if slurm:
            raise ZSBenchError(f"--{slurm[0].replace('_', '-')} is a Slurm option; --launcher local does not use it")
    for flag in ("partition", "account", "qos"):
        value = getattr(args, flag)
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.,:+-]{0,127}", value):
            raise ZSBenchError(f"--{flag} {value!r} is not a Slurm name (letters, digits and _ . , : + - only)")
    if args.time_limit is None and args.launcher == "slurm":
        raise ZSBenchError("--launcher slurm needs --time-limit (per job), e.g. --time-limit 4:00:00 or 240")
    return LaunchOptions(
        launcher=args.launcher,
        time_limit_min=parse_time_limit(args.time_limit) if args.time_limit is not None else 7 * 1440,
        gpus_per_job=positive_int("gpus-per-job", args.gpus_per_job, minimum=0, maximum=64)
        if args.gpus_per_job is not None
        else (1 if args.launcher == "slurm" else 0),
        cpus_per_job=positive_int("cpus-per-job", args.cpus_per_job, maximum=1024),
        mem_gb=positive_int("mem-gb", args.mem_gb, maximum=65536),
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        max_parallel=positive_int("max-parallel", args.max_parallel, maximum=100000),
        wait=bool(args.wait),
    )
