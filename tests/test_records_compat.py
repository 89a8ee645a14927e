"""Records written before the architecture redesign (issue 17) still load and render the same leaderboard.

``tests/data/records_before_redesign`` holds real records written by the code of commit 12f5c94 (the world CLIP on
two world tasks under PGD and APGD-CE, and the tiny model with a trained ft_standard checkpoint, on the
synthetic dataset), with the leaderboard that code rendered from them (its header updated once, by issue 18's line
on averages over one dataset; every table and number is as that code rendered it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from robustbench_zs.cli import main
from robustbench_zs.report import write_leaderboard
from robustbench_zs.results import RecordStore

DATA = Path(__file__).resolve().parent / "data" / "records_before_redesign"


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(DATA / "records", out / "records")
    return out


def test_every_record_from_before_loads(tmp_path):
    records = list(RecordStore(_copy(tmp_path)).iter_records())
    assert len(records) == 16
    assert {r.method for r in records} == {"clip", "ft_standard"}


def test_the_leaderboard_of_old_records_is_the_same_to_the_byte(tmp_path):
    out = _copy(tmp_path)
    paths = write_leaderboard(out)
    for kind, name in (("markdown", "leaderboard.md"), ("csv", "leaderboard.csv")):
        assert paths[kind].read_text(encoding="utf-8") == (DATA / name).read_text(encoding="utf-8"), name


def test_old_records_compare_and_are_reused_by_a_new_run(tmp_path, capsys):
    out = _copy(tmp_path)
    assert main(["compare", "clip", "ft_standard", "--out", str(out)]) == 0
    compared = capsys.readouterr().out
    assert "| Synthetic | PGD-10 L∞ ε=4/255 | 64  | 0.00      | 0.00" in compared and "all 3 pairs" in compared
    argv = ["run", "--preset", "world", "--datasets", "world-colour,world-count", "--attack", "pgd,apgd-ce"]
    argv += ["--eps", "1,4", "--n", "64", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "(0 written, 10 already there)" in printed, printed
