"""``zsbench reproduce``: the paper's tables in its order beside our records, flags on its numbers, dry runs."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_fixtures import write_cifar10
from dataset_fixtures.pcam import write_pcam
from dataset_fixtures.stl10 import write_stl10

from robustbench_zs.cli import main
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.methods.pmg_aft import PMGAFTConfig
from robustbench_zs.models import ModelSpec
from robustbench_zs.paper.match import Found
from robustbench_zs.paper.reproduce import match, paper_threat, plan, render
from robustbench_zs.paper.targets import (
    Column,
    flags_for,
    get_target,
    paper_name,
    paper_numbers,
    paper_value,
    targets,
)
from robustbench_zs.profiles import TRAIN_PROFILES, get_profile, run_config_fields
from robustbench_zs.results import Record, RecordStore, bootstrap_mean_ci, result_block

PAPER_COLUMNS = [
    "CIFAR10", "CIFAR100", "STL10", "SUN397", "Food101", "Oxfordpet", "Flowers102", "DTD", "EuroSAT",
    "Fgvc_Aircraft", "TinyImageNet", "ImageNet", "Caltech101", "Caltech256", "StanfordCars", "PCAM", "Average",
]  # fmt: skip
TABLE1_ROWS = ["CLIP", "FT-Standard", "FT-TeCoA [32]", "PMG-AFT (ours)", "VP-TeCoA [32]", "VPT-PMG-AFT (ours)"]
TINY = ["--arch", "zsbench-tiny", "--pretrained", "random"]


def _table(text: str) -> list[list[str]]:
    """The cells of the first Markdown table in ``text`` (header first, the separator line dropped)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    return [cells[0], *cells[2:]]


def _records(out: Path) -> dict[Path, dict]:
    """Each record's JSON by its path."""
    return {r.path: r.to_json() for r in RecordStore(out).iter_records()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """CLIP (tiny, random weights) on three fixtures under the paper's profile and attack, 32 images each."""
    base = tmp_path_factory.mktemp("reproduce")
    data = base / "data"
    write_cifar10(data, n_test=40, seed=1)
    write_stl10(data, n_test=40, seed=1)
    write_pcam(data, seed=1)  # 8 images: the whole split
    prof = get_profile("paper")
    cfg = RunConfig(
        methods=("clip",),
        datasets=("cifar10", "stl10", "pcam"),
        model=ModelSpec("zsbench-tiny", "random"),
        threats=(paper_threat("pgd10", 1.0, prof),),
        data_root=data,
        out_dir=base / "out",
        n=32,
        cache_dir=base / "cache",
        device="cpu",
        batch_size=256,  # reproduce's default, the official code's: fp16 records are keyed on it
        progress=False,
        **run_config_fields(prof),
    )
    run(cfg, echo=lambda s: None)
    return base


def test_table1_from_records_in_the_papers_order(results, capsys, monkeypatch):
    out, models = results / "out", results / "models"
    monkeypatch.setenv("ZSBENCH_CACHE", str(results / "cache"))
    before = _records(out)
    argv = ["reproduce", "table1", *TINY, "--no-train", "--n", "32", "--device", "cpu"]
    argv += ["--data-root", str(results / "data"), "--out", str(out), "--models-dir", str(models)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert set(_records(out)) == set(before)  # every cell with a record was reused, nothing else could run
    table = _table(text)
    assert table[0] == ["Method", *PAPER_COLUMNS]
    assert [r[0] for r in table[1:]] == TABLE1_ROWS
    clip = dict(zip(PAPER_COLUMNS, table[1][1:], strict=True))
    for ds, col in (("cifar10", "CIFAR10"), ("stl10", "STL10"), ("pcam", "PCAM")):
        (record,) = [r for r in before.values() if r["dataset"]["id"] == ds and r["attack"]["name"] == "pgd"]
        ours, paper, diff = clip[col].split(" / ")
        acc = 100 * record["result"]["accuracy"]
        assert ours.startswith(f"{acc:.2f} [")
        assert float(paper) == paper_value(get_target("table1").rows[0], Column("robust", ds))
        assert float(diff) == pytest.approx(acc - float(paper), abs=0.011)
    assert "(32 of 40 images)" in clip["CIFAR10"] and " of " not in clip["PCAM"]  # PCAM's 8 images: all of them
    assert clip["SUN397"] == "missing / 10.49"
    assert clip["Average"].startswith("n/a (3 of 16) / 17.38")
    pmg = dict(zip(PAPER_COLUMNS, table[4][1:], strict=True))
    assert pmg["CIFAR10"] == "missing / 66.99"
    assert "skipped:" in text and "--no-train" in text
    assert (out / "reproduce" / "table1-paper.md").read_text(encoding="utf-8").startswith("# Table 1 of PMG-AFT")

    # the measured throughput now prices the missing CLIP runs; trainings were never measured
    dry = ["reproduce", "table1", *TINY, "--n", "32", "--dry-run", "--out", str(out), "--models-dir", str(models)]
    assert main(dry) == 0
    report = capsys.readouterr().out
    assert "3 of 96 cells have a record; 93 evaluation runs are missing; 5 trainings are needed" in report
    clip_food = next(line for line in report.splitlines() if "| clip " in line and "| food101 " in line)
    assert "no measured throughput yet" not in clip_food and clip_food.rstrip(" |").endswith(" s")
    assert "5: no measured throughput yet" in report


def test_match_follows_options_training_and_newest(results):
    """A record counts for a cell only with the row's config, training set and train eps; the newest one wins."""
    out = results / "match"
    store = RecordStore(out)
    pgd = next(r for r in _records(results / "out").values() if r["attack"]["name"] == "pgd")

    paper_knobs = TRAIN_PROFILES["paper"].to_dict()

    def fake(
        config: dict,
        acc: int,
        train_dataset="tinyimagenet",
        train_eps=1.0,
        created="2030-01-01T00:00:00+00:00",
        knobs=paper_knobs,
    ):
        r = copy.deepcopy(pgd)
        r["method"], r["created_utc"] = "pmg_aft", created
        r["model"]["method_config"] = config
        r["model"]["training"] = {"train_dataset": train_dataset, "train_eps_255": train_eps, "knobs": knobs}
        r["result"].update(result_block(np.arange(r["result"]["n"]) < acc))  # acc of n correct, fields consistent
        key = hashlib.sha256(json.dumps([config, acc, train_dataset, train_eps, created, knobs]).encode()).hexdigest()
        store.write(store.path_for("pmg_aft", r["dataset"]["id"], "pgd", key), Record.from_json(r))

    # the paper profile's rows are PMG-AFT as the official code trained it: published KL direction, summed KL
    official = dict(kl_direction="published", kl_reduction="sum")
    full, beta0 = PMGAFTConfig(**official).to_dict(), PMGAFTConfig(beta=0.0, **official).to_dict()
    fake(beta0, 3)
    fake(PMGAFTConfig(beta=0.0).to_dict(), 13, created="2031-01-01T00:00:00+00:00")  # the paper's equations: no fit
    fake(beta0, 15, created="2031-01-01T00:00:00+00:00", knobs=TRAIN_PROFILES["standard"].to_dict())  # no fit
    fake(beta0, 17, created="2031-01-01T00:00:00+00:00", knobs=None)  # trained before training profiles: no fit
    fake(full, 5, train_dataset="cifar100")  # table 6's model, not table 10's
    fake(full, 7, train_eps=2.0)  # table 8's eps-2 model, evaluated at eps 1
    fake(full, 9, created="2030-01-02T00:00:00+00:00")
    fake(full, 11, created="2029-12-31T00:00:00+00:00")  # older: passed over

    def found(target: str, row: str, profile: str = "paper"):
        (cell,) = [c for c in plan(target) if c.row == row and c.dataset == pgd["dataset"]["id"]]
        return match([cell], out, profile, arch="zsbench-tiny", pretrained="random", n=32)[cell]

    assert found("table10", "beta0").accuracy == 3 / 32
    (cell,) = [c for c in plan("table10") if c.row == "beta0" and c.dataset == pgd["dataset"]["id"]]
    loose = match([cell], out, "paper", arch="zsbench-tiny", pretrained="random", n=32, check_training=False)[cell]
    assert loose.accuracy in (15 / 32, 17 / 32)  # found only when the training knobs are not checked
    assert found("table10", "full").accuracy == 9 / 32 and found("table10", "full").others == 1
    assert found("table6", "pmg_aft").accuracy == 5 / 32
    assert found("table8", "pmg_aft_eps2") is None  # the eps-2 model has no record of the eps-2 attack
    assert found("table1", "tecoa") is None
    assert found("table10", "beta0", profile="standard") is None  # another profile never matches

    # `zsbench run --profile paper --paper-subsample` records a `custom` profile: its knobs match, its name cannot
    sub = copy.deepcopy(pgd)
    sub["profile"].update(name="custom", paper_subsample=True)
    store.write(store.path_for("clip", sub["dataset"]["id"], "pgd", "f" * 64), Record.from_json(sub))
    (cell,) = [c for c in plan("table1") if c.row == "clip" and c.dataset == pgd["dataset"]["id"]]
    kw = dict(arch="zsbench-tiny", pretrained="random")
    assert match([cell], out, "paper", paper_subsample=True, **kw)[cell].path.name.startswith("pgd-")
    assert match([cell], out, "paper", **kw)[cell] is None


def test_dry_run_lists_every_run_of_table1_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "empty"
    argv = ["reproduce", "table1", "--dry-run", "--out", str(out), "--models-dir", str(tmp_path / "models")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    runs = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(runs) == 96
    for method in ("clip", "ft_standard", "tecoa", "pmg_aft", "vp_tecoa", "vp_pmg_aft"):
        assert sum(f"| {method} " in line for line in runs) == 16
    assert "96 evaluation runs are missing; 5 trainings are needed" in text
    trainings = text.split("## Trainings")[1].split("##")[0]
    assert sum(line.startswith("|") for line in trainings.splitlines()) == 2 + 5  # header, separator, five rows
    assert "| imagenet " in text and "50,000" in text  # sizes from protocol.md section 5
    assert "no measured throughput yet" in text
    assert not out.exists() and not (tmp_path / "models").exists()


def test_paper_flags_fire_on_table2_pcam_and_cross_table_cells():
    t2 = get_target("table2")
    rows = {r.key: r for r in t2.rows}
    pcam = Column("clean", "pcam")
    assert any("StanfordCars (37.89)" in f for f in flags_for(rows["tecoa"], pcam))
    assert any("54.29 in table 11" in f for f in flags_for(rows["tecoa"], pcam))
    assert any("StanfordCars (48.24)" in f for f in flags_for(rows["pmg_aft"], pcam))
    assert not flags_for(rows["clip"], pcam) and not flags_for(rows["tecoa"], Column("clean", "cifar10"))
    full = next(r for r in get_target("table4").rows if r.key == "full")
    assert any("31.95 in table 1" in f for f in flags_for(full, Column("robust", "average")))
    text = render("table2", {})
    (header, *body) = _table(text)
    assert header == ["Method", *PAPER_COLUMNS]
    cells = {r[0]: dict(zip(PAPER_COLUMNS, r[1:], strict=True)) for r in body}
    assert cells["FT-TeCoA [32]"]["PCAM"].startswith("missing / 37.89 ⚠")
    assert cells["PMG-AFT (ours)"]["PCAM"].startswith("missing / 48.24 ⚠")
    assert "⚠" not in cells["CLIP"]["PCAM"]


def test_every_paper_number_has_its_cell():
    """tables.json and paper_tables.csv agree: each table cell finds its number, and each number has a cell."""
    placed = set()
    for t in targets().values():
        for row in t.rows:
            for col in t.columns:
                value = paper_value(row, col)
                if t.kind == "table":
                    assert value is not None, (t.id, row.key, col)
                    placed.add(row.paper.key(col.metric, paper_name(col.dataset)))
    assert placed == set(paper_numbers())


def test_rows_without_settings_show_only_the_papers_numbers():
    assert [c.row for c in plan("table10") if c.row.startswith("variant")] == []
    body = _table(render("table10", {}))[1:]
    lost = [r for r in body if "values lost" in r[0]]
    assert len(lost) == 4 and all(c.startswith("not reproducible / ") for r in lost for c in r[1:])


def test_unknown_target_is_one_line(capsys):
    assert main(["reproduce", "table99", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "table99" in err and "table1, table2" in err and "fig5" in err
    assert main(["reproduce", "table1", "--profile", "nope", "--dry-run"]) == 2
    assert "standard" in capsys.readouterr().err


def test_reproduce_figures_are_named_like_their_markdown(results, tmp_path, capsys):
    """`reproduce fig4|fig5` draws from the records through the real path; no profile overwrites another's files."""
    out, models = tmp_path / "out", tmp_path / "models"
    shutil.copytree(results / "out", out)
    before = set(_records(out))
    common = [*TINY, "--no-train", "--device", "cpu", "--out", str(out), "--models-dir", str(models)]
    common += ["--data-root", str(tmp_path / "no-data")]  # every missing run is skipped: the figures use the records
    base = [*common, "--n", "32"]
    folder = out / "reproduce"
    for fig in ("fig4", "fig5"):
        assert main(["reproduce", fig, *base]) == 0
        text = capsys.readouterr().out
        png, csv = folder / f"{fig}-paper.png", folder / f"{fig}-paper.csv"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and csv.is_file()
        assert f"Figure: {png} (its numbers: {csv})." in text
        assert (
            f"{(folder / f'{fig}-paper.md').read_text(encoding='utf-8')}written: {folder / f'{fig}-paper.md'}" in text
        )
        assert not (folder / f"{fig}.png").exists() and not (folder / f"{fig}.csv").exists()
        plotted = pd.read_csv(csv)
        assert set(plotted["method"]) == {"clip"}
        drawn = png.read_bytes()
        # other profiles write files of their own names, and never draw the paper profile's records
        assert main(["reproduce", fig, *base, "--profile", "standard"]) == 0
        assert main(["reproduce", fig, *common, "--paper-subsample"]) == 0
        text = capsys.readouterr().out
        assert text.count("Figure not drawn: no records under profile") == 2
        assert (folder / f"{fig}-standard.md").is_file() and (folder / f"{fig}-paper-subsample.md").is_file()
        assert png.read_bytes() == drawn and not list(folder.glob(f"{fig}-standard.*g"))
    fig4_points = pd.read_csv(folder / "fig4-paper.csv")
    assert sorted(fig4_points["dataset"].unique()) == ["cifar10", "pcam", "stl10"]
    assert sorted(fig4_points["eps_255"].unique()) == [0.0, 1.0]  # clean at eps 0, PGD-10 at 1/255
    assert set(_records(out)) == before


def test_fig4_caption_describes_the_drawn_figure():
    fig4 = get_target("fig4")
    assert "one panel per dataset" in fig4.caption and "the table below gives the 16-dataset averages" in fig4.caption
    assert [c.dataset for c in fig4.columns] == ["average"]


def test_average_has_a_bootstrap_interval_over_the_records_images(results, tmp_path):
    """Table averages come with the bootstrap interval of the per-image results of the 16 matched records."""
    template = next(r for r in _records(results / "out").values() if r["attack"]["name"] == "pgd")
    rng = np.random.default_rng(0)
    cells = [c for c in plan("table1") if c.row == "clip" and c.metric == "robust"]
    assert len(cells) == 16
    matches, masks = {}, []
    for i, cell in enumerate(cells):
        mask = rng.random(20 + 10 * i) < 0.1 + 0.05 * i
        r = copy.deepcopy(template)
        r["dataset"].update(id=cell.dataset, n=mask.size, n_total=mask.size)
        r["result"] = result_block(mask)
        path = tmp_path / f"{cell.dataset}.json"
        path.write_text(json.dumps(r), encoding="utf-8")
        res = r["result"]
        matches[cell] = Found(path, res["accuracy"], tuple(res["ci95"]), mask.size, mask.size, "", True, None, None)
        masks.append(mask)
    ci = bootstrap_mean_ci(masks)
    assert ci.low < ci.mean < ci.high
    clip = dict(zip(PAPER_COLUMNS, _table(render("table1", matches))[1][1:], strict=True))
    ours, paper, diff = clip["Average"].split(" / ")
    assert ours == f"{100 * ci.mean:.2f} [{100 * ci.low:.1f}–{100 * ci.high:.1f}]"
    assert float(diff) == pytest.approx(100 * ci.mean - float(paper), abs=0.006)
    # the interval comes from the images: the same accuracies on ten times the images give a narrower one
    clip_cifar = next(c for c in cells if c.dataset == "cifar10")
    r = json.loads(matches[clip_cifar].path.read_text(encoding="utf-8"))
    big = np.tile(masks[0], 10)
    r["dataset"].update(n=big.size, n_total=big.size)
    r["result"] = result_block(big)
    matches[clip_cifar].path.write_text(json.dumps(r), encoding="utf-8")
    wide = dict(zip(PAPER_COLUMNS, _table(render("table1", matches))[1][1:], strict=True))["Average"]
    narrower = bootstrap_mean_ci([big, *masks[1:]])
    assert wide.split(" / ")[0] == f"{100 * narrower.mean:.2f} [{100 * narrower.low:.1f}–{100 * narrower.high:.1f}]"
