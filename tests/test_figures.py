"""Figures 4 and 5 from real records: they plot exactly the records' numbers, under one protocol profile."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from robustbench_zs.attacks import Threat
from robustbench_zs.datasets.fixtures import write_cifar10
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.figures import fig4, fig5
from robustbench_zs.leaderboard.build import records_frame
from robustbench_zs.models import HeadKnobs, ModelSpec, load_model

ALPHAS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """clip and a WiSE-FT sweep (towards another random tiny model) on two datasets, clean and PGD at eps 1 and 4;
    plus clip under the ImageNet normalization, a second profile."""
    root = tmp_path_factory.mktemp("figures")
    write_cifar10(root / "data", n_test=32)
    theta1 = root / "theta1.pth.tar"
    other = load_model(ModelSpec("zsbench-tiny", "random", init_seed=1))
    torch.save({"vision_encoder_state_dict": other.model.visual.state_dict()}, theta1)
    common = dict(
        model=ModelSpec("zsbench-tiny", "random"),
        data_root=root / "data",
        out_dir=root / "out",
        cache_dir=root / "cache",
        n=32,
        device="cpu",
        progress=False,
    )
    run(
        RunConfig(
            methods=("clip", "interpolation"),
            datasets=("synthetic", "cifar10"),
            threats=tuple(Threat("pgd", "linf", e / 255, 2, 1 / 255) for e in (1, 4)),
            method_options={"interpolation": {"theta1": str(theta1), "alpha": ",".join(map(str, ALPHAS))}},
            **common,
        ),
        echo=lambda s: None,
    )
    run(
        RunConfig(
            methods=("clip",),
            datasets=("synthetic",),
            threats=(Threat("pgd", "linf", 1 / 255, 2, 1 / 255),),
            knobs=HeadKnobs(normalization="imagenet"),
            **common,
        ),
        echo=lambda s: None,
    )
    return records_frame(root / "out")


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fig4_plots_the_records(records, tmp_path):
    with pytest.raises(ZSBenchError, match=r"2 protocol profiles; pass profile= one of: normalization=clip"):
        fig4(records, tmp_path)
    paths = fig4(records, tmp_path, profile={"normalization": "clip"})
    assert _is_png(paths["png"]) and paths["png"].stat().st_size > 20_000
    plotted = pd.read_csv(paths["csv"])
    # 4 lines (clip, three alphas) x 2 datasets x (clean + 2 eps)
    assert len(plotted) == 4 * 2 * 3
    assert list(plotted["dataset"].drop_duplicates()) == ["cifar10", "synthetic"]  # the registry's order
    assert sorted(plotted["eps_255"].unique()) == [0.0, 1.0, 4.0]
    clip = records[(records["method"] == "clip") & records["protocol"].str.contains('"normalization": "clip"')]
    for _, r in clip.iterrows():
        row = plotted[(plotted["method"] == "clip") & (plotted["dataset"] == r["dataset"])]
        row = row[row["eps_255"] == r["eps_255"]].iloc[0]
        assert row["accuracy"] == pytest.approx(r["accuracy"]) and row["n"] == 32
        assert row["ci_low"] == pytest.approx(r["ci95_low"]) and row["ci_high"] == pytest.approx(r["ci95_high"])
    # a subset of the methods
    only = pd.read_csv(fig4(records, tmp_path, methods=["clip"], profile={"normalization": "clip"})["csv"])
    assert set(only["method"]) == {"clip"}
    with pytest.raises(ZSBenchError, match="threat families present: PGD-2 L∞"):
        fig4(records, tmp_path, profile={"normalization": "clip"}, threat="PGD-10 L∞")


def test_fig5_tradeoff_and_interpolation_curve(records, tmp_path):
    with pytest.raises(ZSBenchError, match="protocol profiles"):
        fig5(records, tmp_path, threat="PGD-2 L∞ ε=1/255")
    clip_profile = {"normalization": "clip"}
    with pytest.raises(ZSBenchError, match="several threats; pass threat= one of: PGD-2 L∞ ε=1/255, PGD-2 L∞ ε=4/255"):
        fig5(records, tmp_path, profile=clip_profile)
    paths = fig5(records, tmp_path, profile=clip_profile, threat="PGD-2 L∞ ε=1/255", n_boot=500)
    assert _is_png(paths["png"]) and paths["png"].stat().st_size > 20_000
    table = pd.read_csv(paths["csv"])
    assert len(table) == 4 and set(table["n_datasets"]) == {2}
    curve = table[table["method_id"] == "interpolation"]
    assert sorted(curve["alpha"]) == list(ALPHAS) and curve["curve"].nunique() == 1
    sel = records[records["protocol"].str.contains('"normalization": "clip"')]
    for _, row in table.iterrows():
        mine = sel[sel["method"] == row["method"]]
        clean = mine[mine["table"] == "Clean"]["accuracy"].mean()
        robust = mine[mine["table"] == "PGD-2 L∞ ε=1/255"]["accuracy"].mean()
        assert row["clean_avg"] == pytest.approx(clean) and row["robust_avg"] == pytest.approx(robust)
        assert row["clean_low"] <= row["clean_avg"] <= row["clean_high"]
    # alpha = 0 is the pre-trained encoder: the same point as clip
    a0 = table[table["alpha"] == 0.0].iloc[0]
    c = table[table["method"] == "clip"].iloc[0]
    assert (a0["clean_avg"], a0["robust_avg"]) == (c["clean_avg"], c["robust_avg"])


def test_fig5_averages_only_common_datasets(records, tmp_path):
    # the ImageNet-normalized clip exists on synthetic only: on its own it averages one dataset
    paths = fig5(records, tmp_path, profile={"normalization": "imagenet"})
    table = pd.read_csv(paths["csv"])
    assert list(table["datasets"]) == ["synthetic"] and list(table["n_datasets"]) == [1]
    # without cifar10's robust records for clip, only synthetic is common to all methods
    no_cifar_clip = records[~((records["method"] == "clip") & (records["dataset"] == "cifar10"))]
    table = pd.read_csv(
        fig5(no_cifar_clip, tmp_path, profile={"normalization": "clip"}, threat="PGD-2 L∞ ε=4/255", n_boot=200)["csv"]
    )
    assert set(table["datasets"]) == {"synthetic"} and len(table) == 4
    with pytest.raises(ZSBenchError, match="needs records under attack"):
        fig5(records[records["table"] == "Clean"], tmp_path)
