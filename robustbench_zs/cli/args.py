"""Argument types and the parser class shared by every subcommand: one place, so that no subcommand imports another."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import ZSBenchError
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
