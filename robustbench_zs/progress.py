"""Progress of long loops (evaluation, training, decoding into the tensor cache): a tqdm bar on a terminal, and
where stdout is no terminal (``nohup``, Slurm, CI logs) one plain line at a steady interval, so that a log shows a
run is alive, how fast it goes and when it will end.

The interval is :data:`DEFAULT_EVERY_S` seconds, or ``ZSBENCH_PROGRESS_EVERY`` (seconds) from the environment.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm

from .errors import ZSBenchError

#: Seconds between two progress lines when stdout is not a terminal.
DEFAULT_EVERY_S = 60.0
#: The environment variable that sets another interval, in seconds.
EVERY_ENV = "ZSBENCH_PROGRESS_EVERY"


def progress_every() -> float:
    """The interval between progress lines: ``ZSBENCH_PROGRESS_EVERY`` seconds when set, else the default."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        every = math.nan
    if not (math.isfinite(every) and every > 0):
        raise ZSBenchError(f"{EVERY_ENV}={raw!r} is not a number of seconds above 0; set it to, e.g., 60, or unset it")
    return every


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: a short human duration."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts work done in one loop and shows it.

    Args:
        total: units of work in the whole loop (those done before this process started included).
        desc: what the loop does (method, dataset and attack of an evaluation).
        unit: the unit's name in the lines, plural (``images``, ``steps``).
        show: True: a bar even without a terminal; False: nothing; None: a bar when stdout is a terminal, lines
            at a steady interval when it is not.
        initial: units done before this process started (a resumed evaluation or training); not in the rate.
        clock, write: the time source and the line sink (tests).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        *,
        show: bool | None = None,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.done = int(total), desc, unit, int(initial)
        self._initial, self._clock = int(initial), clock
        self._write = write or (lambda line: print(line, flush=True))
        self.lines = show is None and not _stdout_is_terminal()
        self.every = progress_every() if self.lines else math.inf
        self._bar = None
        if show is not False and not self.lines:
            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, disable=None if show is None else False
            )
        self._start = self._last = clock()
        self.printed = 0
        self._said = -1  # the count shown by the last line
        self._extra: dict[str, str] = {}

    def set_postfix(self, values: dict[str, str]) -> None:
        """Figures to show beside the count (a training's loss): after the bar, or at the end of each line."""
        self._extra = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values)

    def update(self, n: int) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(n)
        elif self.lines:
            now = self._clock()
            if now - self._last >= self.every:
                self._say(now)

    def line(self, now: float) -> str:
        """``desc: 1,280/10,000 images (12.8%), 41.2 images/s, ETA 3m32s`` (then the postfix, if any)."""
        elapsed = max(now - self._start, 1e-9)
        rate = (self.done - self._initial) / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        head = f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%), {rate:,.1f} {self.unit}/s"
        if self.done >= self.total:
            head += f", done in {duration(elapsed)}"
        else:
            head += f", ETA {duration((self.total - self.done) / rate) if rate > 0 else 'unknown'}"
        return "".join([head, *(f", {k} {v}" for k, v in self._extra.items())])

    def close(self) -> None:
        """Close the bar; a loop that printed lines ends with one saying it is done."""
        if self._bar is not None:
            self._bar.close()
        elif self.printed and self.done >= self.total and self._said < self.done:
            self._say(self._clock())

    def _say(self, now: float) -> None:
        self._last, self._said = now, self.done
        self._write(self.line(now))
        self.printed += 1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif exc[0] is None:
            self.close()


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False
