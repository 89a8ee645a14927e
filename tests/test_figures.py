"""Figures 4 and 5 from real records: they plot exactly the records' numbers, under one protocol profile."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from dataset_fixtures import write_cifar10

from robustbench_zs.attacks import Threat
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import HeadKnobs, ModelSpec, load_model
from robustbench_zs.report.figures import _fig4_figure, _fig5_figure, _new_figure, _place_labels, fig4, fig5
from robustbench_zs.report.leaderboard import records_frame

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


# ------------------------------------------------------------------------------------------------ legibility


def _inside_figure(fig) -> list[str]:
    """Lay the figure out and check that every visible text (suptitle, titles, axis labels, legend entries, point
    labels), every legend and every panel with its drawn tick labels lies inside the figure; returns the texts."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    axes = [ax for ax in fig.axes if ax.get_visible()]
    # tick labels are checked through their panel's tight box, which holds the drawn ones only
    ticks = {
        label
        for ax in fig.axes
        for axis in (ax.xaxis, ax.yaxis)
        for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]
        for label in (tick.label1, tick.label2)
    }
    texts = [
        t
        for t in fig.findobj(Text)
        if t not in ticks and t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes in axes)
    ]
    extents = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    extents += [("legend", leg.get_window_extent(renderer)) for leg in fig.legends]
    extents += [(f"panel {ax.get_title()}", ax.get_tightbbox(renderer)) for ax in axes]
    for what, e in extents:
        assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1, (what, e, box)
        assert box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, (what, e, box)
    return [t.get_text() for t in texts]


def _no_overlaps(fig, annotations) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(a.get_text(), a.get_window_extent(renderer)) for a in annotations]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1 :]:
            assert not a.overlaps(b), (ta, tb, a, b)


def test_one_panel_fig4_fits_its_figure_and_names_its_units(records, tmp_path):
    one = records[records["dataset"] == "synthetic"]
    fig, _ = _fig4_figure(one, None, {"normalization": "clip"}, None)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    texts = _inside_figure(fig)
    assert fig._suptitle.get_text() in texts and any(t.startswith("interpolation(") for t in texts)
    assert ax.get_xlabel() == "ε (×1/255)" and ax.get_ylabel().endswith("accuracy (%)")
    # several panels (the paper's figure: one per dataset) fit as well, each with its units
    fig, _ = _fig4_figure(records, None, {"normalization": "clip"}, None)
    shown = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title().split(" (")[0] for a in shown] == ["CIFAR-10", "Synthetic"]
    assert all("(×1/255)" in a.get_xlabel() for a in shown) and "(%)" in shown[0].get_ylabel()
    _inside_figure(fig)
    # files take the name they are given (reproduce: like its Markdown), else fig4
    paths = fig4(one, tmp_path, profile={"normalization": "clip"}, name="fig4-standard")
    assert paths["png"].name == "fig4-standard.png" and paths["csv"].name == "fig4-standard.csv"
    assert _is_png(paths["png"]) and not (tmp_path / "fig4.png").exists()
    with pytest.raises(ZSBenchError, match="without folders"):
        fig4(one, tmp_path, profile={"normalization": "clip"}, name="../fig4")


def test_fig5_point_labels_do_not_overlap(records):
    fig, table = _fig5_figure(records, None, {"normalization": "clip"}, "PGD-2 L∞ ε=1/255", 200)
    (ax,) = fig.axes
    labels = [t for t in ax.texts if t.get_text().startswith("α=")]
    # one label per point: alphas on the same point share one
    alphas = [a for t in labels for a in t.get_text().removeprefix("α=").split(", ")]
    assert sorted(map(float, alphas)) == sorted(table["alpha"].dropna())
    _inside_figure(fig)
    _no_overlaps(fig, labels)
    assert ax.get_xlabel().endswith("(%)") and "(%)" in ax.get_ylabel()


def test_crowded_point_labels_are_spread_apart():
    """Points a pixel apart (as alpha 0.75 and 1 can be) still get labels that do not overlap, inside the axes."""
    fig = _new_figure(6.4, 5.0)
    ax = fig.add_subplot()
    xs = [40.0, 40.05, 40.1, 40.12, 40.2, 40.21]
    ys = [30.0, 30.02, 30.03, 30.05, 30.04, 30.06]
    ax.plot(xs, ys, "s-")
    ax.set_xlim(39, 41.5)
    ax.set_ylim(29, 31)
    tags = [(x, y, f"α={a:g}", "C1") for x, y, a in zip(xs, ys, (0, 0.25, 0.5, 0.6, 0.75, 1), strict=True)]
    placed = _place_labels(ax, tags, [(x, y, 5.0) for x, y in zip(xs, ys, strict=True)])
    assert len(placed) == len(tags) == len(ax.texts)
    _no_overlaps(fig, placed)
    _inside_figure(fig)
