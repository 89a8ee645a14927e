"""Leaderboards: their numbers equal the records', rows are methods, columns datasets, protocols never mix."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from robustbench_zs.attacks import Threat
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.models import HeadKnobs, ModelSpec
from robustbench_zs.report import write_leaderboard


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
        # one dataset: the Average's interval is that dataset's Wilson interval, not a bootstrap that differs
        low, high = r["result"]["ci95"]
        assert match[0]["Average_ci95_low"] == pytest.approx(100 * low, abs=1e-9)
        assert match[0]["Average_ci95_high"] == pytest.approx(100 * high, abs=1e-9)
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
    from dataset_fixtures import write_cifar10

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


# ------------------------------------------------------------------------------------------------ knob notes


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """clip on 32 synthetic images, clean and PGD, recorded under the `paper` profile's name."""
    root = tmp_path_factory.mktemp("knobs")
    _run(root, ModelSpec("zsbench-tiny", "random"), n_override=32, profile="paper")
    return root / "out"


def _twins(src, dst, change, attacked_only: bool = False):
    """Copy the records under ``src`` to ``dst`` and add to each a twin edited by ``change(record)`` (its JSON)."""
    import hashlib
    import shutil

    from robustbench_zs.results import Record, RecordStore

    shutil.copytree(src, dst)
    store = RecordStore(dst)
    for r in list(store.iter_records()):
        if attacked_only and r.is_clean:
            continue
        twin = r.to_json()
        change(twin)
        key = hashlib.sha256(json.dumps(twin, sort_keys=True).encode()).hexdigest()
        path = store.path_for(twin["method"], twin["dataset"]["id"], r.path.stem + "-twin", key)
        store.write(path, Record.from_json(twin))
    return dst


def _notes(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("Not ranked with")]


def test_knob_notes_name_the_paper_subsample(one_run, tmp_path):
    def subsample(r):  # what `--profile paper --paper-subsample` records: the knob on, the profile named custom
        r["profile"].update(name="custom", paper_subsample=True)

    out = _twins(one_run, tmp_path / "out", subsample)
    md = write_leaderboard(out)["markdown"].read_text()
    assert md.count("## Clean") == 2 and md.count("## PGD-2 L∞ ε=1/255") == 2
    notes = _notes(md)
    assert len(notes) == 4 and all("paper_subsample: " in n for n in notes)
    assert any("paper_subsample: False vs True" in n for n in notes) and all("profile:" not in n for n in notes)
    assert "profile custom; " in md and "profile paper; " in md and "the paper's subsample (every 20th batch" in md
    # --mix-profiles still puts both in one table, each row naming its profile
    mixed = write_leaderboard(out, mix_profiles=True)["markdown"].read_text()
    assert mixed.count("## Clean") == 1 and "[paper]" in mixed and "[custom]" in mixed and not _notes(mixed)


def test_knob_notes_name_the_attack_precision(one_run, tmp_path):
    from robustbench_zs.attacks.base import PRECISION_NOTES

    def fp16(r):
        r["attack"].update(precision="fp16", precision_detail=PRECISION_NOTES["fp16"])
        r["threat_label"] += " fp16"
        r["profile"]["attack_precision"] = "fp16"

    out = _twins(one_run, tmp_path / "out", fp16, attacked_only=True)
    md = write_leaderboard(out)["markdown"].read_text()
    assert md.count("## Clean") == 1 and "## PGD-2 L∞ ε=1/255\n" in md and "## PGD-2 L∞ ε=1/255 fp16\n" in md
    notes = _notes(md)
    assert len(notes) == 2 and all("(attack_precision: " in n for n in notes), notes
    assert (
        "Not ranked with the PGD-2 L∞ ε=1/255 fp16 table measured under other knobs (attack_precision: 'fp32' vs "
        "'fp16')." in notes
    )


def test_robust_accuracy_is_checked_across_attack_steps(tmp_path):
    """PGD at 1 and 5 steps on the same images: a cross-record check compares them (it passes here: more steps
    never leave more points robust on this model, and the check says so)."""
    from robustbench_zs.report.leaderboard import cross_record_checks, records_frame

    for steps in (1, 5):
        run(
            RunConfig(
                methods=("clip",),
                datasets=("synthetic",),
                model=ModelSpec("zsbench-tiny", "random"),
                threats=(Threat("pgd", "linf", 4 / 255, steps, 1 / 255),),
                data_root=tmp_path / "data",
                out_dir=tmp_path / "out",
                cache_dir=tmp_path / "cache",
                n=32,
                device="cpu",
                progress=False,
            ),
            echo=lambda s: None,
        )
    checks = cross_record_checks(records_frame(tmp_path / "out"))
    steps = [c for c in checks["check"] if c["name"] == "robust_rises_with_steps"]
    assert len(steps) == 1 and steps[0]["passed"], steps
