"""Argument types and the parser class shared by every subcommand: one place, so that no subcommand imports another."""

from __future__ import annotations

import argparse
import math

from ..errors import ZSBenchError

EXIT_USAGE = 2
#: the largest evaluation batch accepted (far above what any accelerator holds at 224 px; larger is a typo)
MAX_BATCH = 65536


class Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ZSBenchError(f"--{what} is empty; give a comma-separated list")
    return items


def parse_eps(value: str, flag: str = "eps") -> list[float]:
    """'1,2,4' (units of 1/255) -> [1/255, 2/255, 4/255], each checked to be a number in [0, 255]."""
    items = [v.strip() for v in str(value).split(",")]
    if not any(items):
        raise ZSBenchError(f"--{flag} is empty; give values in units of 1/255, e.g. --{flag} 1,2,4")
    out = []
    for item in items:
        try:
            if not item or "_" in item:
                raise ValueError
            v = float(item)
        except ValueError:
            raise ZSBenchError(
                f"--{flag} {item!r} is not a number; give values in units of 1/255, e.g. --{flag} 1,2,4"
            ) from None
        if not math.isfinite(v) or v < 0:
            raise ZSBenchError(f"--{flag} {item} is negative or not finite; it is in units of 1/255, >= 0")
        if v > 255:
            raise ZSBenchError(f"--{flag} {item} is over 255; it is in units of 1/255 (255 = the whole pixel range)")
        out.append(v / 255)
    return sorted(set(out))


def parse_step_size(value: str) -> float:
    (step, *rest) = parse_eps(value, "step-size")
    if rest or "," in str(value):
        raise ZSBenchError("--step-size takes one value (units of 1/255)")
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
