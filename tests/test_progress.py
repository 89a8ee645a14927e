"""Progress without a terminal: one line at a steady interval with images done, rate and ETA, per dataset and
attack (and per training), so a run under nohup, Slurm or CI shows it is alive."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from robustbench_zs.errors import ZSBenchError
from robustbench_zs.progress import EVERY_ENV, Progress, duration, progress_every


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_lines_come_at_the_interval_with_count_rate_and_eta(monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "30")
    clock, lines = Clock(), []
    with Progress(1000, "clip/cifar10 PGD-10", "images", initial=100, clock=clock, write=lines.append) as p:
        assert p.lines  # pytest's captured stdout is no terminal
        for _ in range(9):
            clock.t += 10
            p.update(100)
    # 90 s of work in steps of 10 s: a line at 30, 60 and 90 s; the last one says done, so no closing line
    assert lines == [
        "clip/cifar10 PGD-10: 400/1,000 images (40.0%), 10.0 images/s, ETA 1m00s",
        "clip/cifar10 PGD-10: 700/1,000 images (70.0%), 10.0 images/s, ETA 30s",
        "clip/cifar10 PGD-10: 1,000/1,000 images (100.0%), 10.0 images/s, done in 1m30s",
    ]


def test_a_loop_that_ends_between_two_lines_ends_with_a_closing_line(monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "30")
    clock, lines = Clock(), []
    with Progress(1000, "d", "images", clock=clock, write=lines.append) as p:
        clock.t += 40
        p.update(500)
        clock.t += 10
        p.update(500)  # done 10 s after the last line: the closing line says so
    assert lines == [
        "d: 500/1,000 images (50.0%), 12.5 images/s, ETA 40s",
        "d: 1,000/1,000 images (100.0%), 20.0 images/s, done in 50s",
    ]


def test_a_short_loop_prints_nothing_and_shown_false_never_prints(monkeypatch):
    clock, lines = Clock(), []
    with Progress(10, "x", "images", clock=clock, write=lines.append) as p:
        clock.t += 5
        p.update(10)
    with Progress(10, "x", "images", show=False, clock=clock, write=lines.append) as p:
        clock.t += 3600
        p.update(10)
    assert lines == []


def test_a_loop_that_fails_says_nothing_more_and_a_postfix_ends_the_line(monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "1")
    clock, lines = Clock(), []
    with pytest.raises(RuntimeError), Progress(4, "train tecoa", "steps", clock=clock, write=lines.append) as p:
        clock.t += 2
        p.set_postfix({"loss": "2.301"})
        p.update(1)
        raise RuntimeError
    assert lines == ["train tecoa: 1/4 steps (25.0%), 0.5 steps/s, ETA 6s, loss 2.301"]


@pytest.mark.parametrize("raw", ["0", "-5", "abc", "nan", "inf", "1e999"])
def test_a_bad_interval_is_one_line(monkeypatch, raw):
    monkeypatch.setenv(EVERY_ENV, raw)
    with pytest.raises(ZSBenchError, match=f"{EVERY_ENV}=.* is not a number of seconds above 0"):
        progress_every()


def test_durations():
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600, 7620)] == ["0s", "59s", "1m01s", "59m59s", "1h00m", "2h07m"]


def test_a_run_and_a_training_without_a_terminal_print_progress_lines(tmp_path):
    """Under a pipe (as under nohup or Slurm), zsbench run and train print lines with count, rate and ETA."""
    env = {**os.environ, EVERY_ENV: "0.001", "ZSBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "robustbench_zs", "run", "--preset", "smoke", "--n", "16", "--batch-size", "4"]
    run += ["--eps", "1", "--out", str(tmp_path / "r"), "--data-root", str(tmp_path)]
    out = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    line = re.compile(r"^clip/synthetic (Clean|PGD-\S+ .*): (\d+)/16 images \([\d.]+%\), [\d.,]+ images/s, (ETA|done)")
    seen = [m.group(1) for m in map(line.match, out.stdout.splitlines()) if m]
    assert any(s == "Clean" for s in seen) and any(s != "Clean" for s in seen), out.stdout
    assert "it/s" not in out.stderr and "batch/s" not in out.stderr  # no bar without a terminal
    train = [sys.executable, "-m", "robustbench_zs", "train", "--method", "ft_standard", "--arch", "zsbench-tiny"]
    train += ["--pretrained", "random", "--train-dataset", "synthetic", "--models-dir", str(tmp_path / "m")]
    train += ["--data-root", str(tmp_path), "--batch-size", "32", "--epochs", "1", "--device", "cpu"]
    out = subprocess.run(train, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^train ft_standard: \d+/\d+ steps .*steps/s, (ETA|done).*, loss [\d.]+", out.stdout, re.M)


def test_no_progress_prints_no_lines(tmp_path):
    env = {**os.environ, EVERY_ENV: "0.001", "ZSBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "robustbench_zs", "run", "--preset", "smoke", "--n", "16", "--batch-size", "4"]
    run += ["--attack", "none", "--out", str(tmp_path / "r"), "--data-root", str(tmp_path), "--no-progress"]
    out = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "images/s" not in out.stdout.replace("records", ""), out.stdout


def test_a_bad_interval_stops_a_run_in_one_line(tmp_path):
    env = {**os.environ, EVERY_ENV: "soon", "ZSBENCH_CACHE": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "robustbench_zs", "run", "--preset", "smoke", "--n", "8", "--attack", "none"]
    run += ["--out", str(tmp_path / "r"), "--data-root", str(tmp_path)]
    out = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"zsbench: error: {EVERY_ENV}='soon' is not a number of seconds above 0; set it to, e.g., 60, or unset it"
    ]
