"""Leaderboards: their numbers equal the records', rows are methods, columns datasets, protocols never mix."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from robustbench_zs.attacks import Threat
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.leaderboard import write_leaderboard
from robustbench_zs.models import HeadKnobs, ModelSpec


def _run(tmp_path, model: ModelSpec, n_override: int | None = 64, **kw):
    cfg = RunConfig(
        methods=("clip",),
        datasets=kw.pop("datasets", ("synthetic",)),
        model=model,
        threats=(Threat("pgd", "linf", 1 / 255, 2, 1 / 255),),
        data_root=tmp_path / "data",
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        n=n_override,
        device="cpu",
        progress=False,
        **kw,
    )
    return run(cfg, echo=lambda s: None)


@pytest.fixture
def board(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, ModelSpec("zsbench-tiny", "random", init_seed=seed))
    _run(tmp_path, ModelSpec("zsbench-tiny", "random"), knobs=HeadKnobs(normalization="imagenet"))
    return tmp_path / "out", write_leaderboard(tmp_path / "out")


def test_leaderboard_numbers_equal_the_records(board):
    out, paths = board
    wide = pd.read_csv(paths["csv"])
    records = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    assert len(records) == 6
    for r in records:
        label = f"clip · {r['model']['label']}"
        rows = wide[(wide["method"] == label) & (wide["table"] == r["threat_label"])]
        match = [
            row for _, row in rows.iterrows() if f"; normalization {r['profile']['normalization']};" in row["protocol"]
        ]
        assert len(match) == 1, (label, r["threat_label"])
        assert match[0]["Synthetic"] == pytest.approx(100 * r["result"]["accuracy"], abs=1e-9)
        assert match[0]["Average"] == pytest.approx(100 * r["result"]["accuracy"], abs=1e-9)
    long = pd.read_csv(paths["records_csv"])
    assert len(long) == 6 and set(long["record"]) == {str(p) for p in (out / "records").rglob("*.json")}


def test_tables_split_by_threat_and_protocol(board):
    _, paths = board
    md = paths["markdown"].read_text()
    # clean and PGD, each for the two normalizations: four tables
    assert md.count("## Clean") == 2 and md.count("## PGD-2 L∞ ε=1/255") == 2
    assert "normalization imagenet" in md and "normalization clip" in md
    assert "clip · zsbench-tiny/random(seed=0)" in md and "clip · zsbench-tiny/random(seed=1)" in md
    assert md.index("## Clean") < md.index("## PGD")
    for line in md.splitlines():
        if line.startswith("| clip"):
            # every cell carries its interval
            assert line.count("(") >= 2


def test_average_only_for_complete_rows(tmp_path):
    from robustbench_zs.datasets.fixtures import write_cifar10

    write_cifar10(tmp_path / "data", n_test=30)
    _run(tmp_path, ModelSpec("zsbench-tiny", "random"), datasets=("synthetic", "cifar10"))
    _run(tmp_path, ModelSpec("zsbench-tiny", "random", init_seed=1), datasets=("synthetic",))
    paths = write_leaderboard(tmp_path / "out")
    wide = pd.read_csv(paths["csv"])
    clean = wide[wide["table"] == "Clean"].set_index("method")
    assert list(clean.columns[-5:]) == ["CIFAR-10", "Synthetic", "Average", "Average_ci95_low", "Average_ci95_high"]
    full = clean.loc["clip · zsbench-tiny/random(seed=0)"]
    assert full["Average"] == pytest.approx((full["CIFAR-10"] + full["Synthetic"]) / 2)
    assert full["Average_ci95_low"] <= full["Average"] <= full["Average_ci95_high"]
    assert pd.isna(clean.loc["clip · zsbench-tiny/random(seed=1)", "Average"])
    md = paths["markdown"].read_text()
    assert "No average for rows missing a dataset: clip · zsbench-tiny/random(seed=1)" in md


def test_hand_edited_invalid_record_is_skipped(board):
    out, _ = board
    victim = next((out / "records").rglob("*.json"))
    victim.write_text('{"schema_version": 1')
    with pytest.warns(UserWarning, match="skipping invalid record"):
        paths = write_leaderboard(out)
    assert len(pd.read_csv(paths["records_csv"])) == 5


def test_rows_on_different_images_never_share_a_column(tmp_path):
    _run(tmp_path, ModelSpec("zsbench-tiny", "random"))  # n=64
    _run(tmp_path, ModelSpec("zsbench-tiny", "random", init_seed=1), n_override=None)  # all 512 images
    paths = write_leaderboard(tmp_path / "out")
    wide = pd.read_csv(paths["csv"])
    clean = wide[wide["table"] == "Clean"].set_index("method")
    cols = [c for c in clean.columns if c.startswith("Synthetic")]
    assert len(cols) == 2 and any("64 of 512 images" in c for c in cols) and any("512 images" in c for c in cols)
    for _, row in clean.iterrows():
        assert row[cols].notna().sum() == 1
    assert clean["Average"].isna().all()
    assert "No averages: rows were evaluated on different images of Synthetic" in paths["markdown"].read_text()


def test_attack_seed_is_in_the_protocol_line(tmp_path):
    _run(tmp_path, ModelSpec("zsbench-tiny", "random"), seed=0)
    _run(tmp_path, ModelSpec("zsbench-tiny", "random"), seed=1)
    md = write_leaderboard(tmp_path / "out")["markdown"].read_text()
    assert "attack seed 0" in md and "attack seed 1" in md
