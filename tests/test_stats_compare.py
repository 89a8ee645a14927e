"""Statistics against worked examples, and ``zsbench compare`` pairing records only on the same images and protocol."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from robustbench_zs.attacks import Threat
from robustbench_zs.cli import main
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import ModelSpec, load_model
from robustbench_zs.report.compare import compare, comparison_frame, render
from robustbench_zs.results import bootstrap_mean_ci, holm_adjust, mcnemar, wilson_interval

# ----------------------------------------------------------------------------------------------- statistics


def _paired(b: int, c: int, both: int = 0, neither: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masks with b images right only under A, c right only under B, and concordant images."""
    a = np.array([True] * b + [False] * c + [True] * both + [False] * neither)
    bb = np.array([False] * b + [True] * c + [True] * both + [False] * neither)
    return a, bb


def test_mcnemar_exact_textbook_example():
    # b = 10, c = 2: P(X <= 2) for X ~ Bin(12, 1/2) is (1 + 12 + 66) / 4096 = 79/4096; two-sided p = 79/2048
    r = mcnemar(*_paired(10, 2, both=50, neither=38))
    assert (r.n, r.b, r.c, r.test) == (100, 10, 2, "exact")
    assert r.p_exact == pytest.approx(79 / 2048, rel=1e-12) and r.p_value == r.p_exact
    assert round(r.p_value, 5) == 0.03857
    assert r.p_exact == pytest.approx(sps.binomtest(2, 12, 0.5).pvalue, rel=1e-12)
    # the corrected chi-square is computed alongside: (|10 - 2| - 1)^2 / 12 = 49/12
    assert r.chi2 == pytest.approx(49 / 12)
    # swapping A and B swaps b and c and leaves the p-values alone
    s = mcnemar(*_paired(10, 2, both=50, neither=38)[::-1])
    assert (s.b, s.c, s.p_exact, s.p_chi2) == (2, 10, r.p_exact, r.p_chi2)


def test_mcnemar_chi_square_from_25_discordant_pairs():
    # b = 30, c = 12: chi2 = (18 - 1)^2 / 42 = 289/42 = 6.881; the df=1 table puts 6.635 at p = 0.01 and 7.879 at
    # p = 0.005, so 0.005 < p < 0.01 (p = 0.00871)
    r = mcnemar(*_paired(30, 12, both=100))
    assert r.test == "chi2" and r.chi2 == pytest.approx(289 / 42, rel=1e-12)
    assert r.p_chi2 == pytest.approx(math.erfc(math.sqrt(289 / 42 / 2)), rel=1e-12)
    assert r.p_chi2 == pytest.approx(sps.chi2.sf(289 / 42, 1), rel=1e-9)
    assert 0.005 < r.p_value < 0.01 and round(r.p_value, 5) == 0.00871 and r.p_value == r.p_chi2
    # the threshold: 24 discordant pairs are tested exactly, 25 by chi-square
    assert mcnemar(*_paired(20, 4)).test == "exact" and mcnemar(*_paired(20, 5)).test == "chi2"


def test_mcnemar_edge_cases_and_large_counts():
    r = mcnemar(*_paired(0, 0, both=5, neither=5))
    assert (r.b, r.c, r.p_exact, r.p_chi2, r.chi2) == (0, 0, 1.0, 1.0, 0.0)
    assert mcnemar(*_paired(5, 5)).p_exact == 1.0  # capped at 1
    # beyond 5000 discordant pairs the binomial tail is summed in log space; it still matches scipy
    big = mcnemar(*_paired(2900, 3100))
    assert big.p_exact == pytest.approx(sps.binomtest(2900, 6000, 0.5).pvalue, rel=1e-8)
    with pytest.raises(ValueError, match="same length"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_holm_adjusted_p_values_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (monotone)
    adj = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(adj <= 0.05) == [True, False, False, True]
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0]) and holm_adjust([]).size == 0


def test_wilson_worked_example():
    # 81 of 263 (Newcombe 1998, Stat Med 17:857, example (a)): p = 0.30798, z = 1.95996;
    # center = (p + z^2/2n) / (1 + z^2/n) = 0.31075, half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) = 0.05546
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert (lo + hi) / 2 == pytest.approx((81 / 263 + 1.959964**2 / 526) / (1 + 1.959964**2 / 263), rel=1e-6)


def test_bootstrap_mean_ci():
    rng = np.random.default_rng(1)
    small = [rng.random(50) < 0.3, rng.random(80) < 0.6]
    ci = bootstrap_mean_ci(small, n_boot=2000, seed=0)
    assert ci.mean == pytest.approx((small[0].mean() + small[1].mean()) / 2)
    assert ci.low < ci.mean < ci.high
    assert bootstrap_mean_ci(small, n_boot=2000, seed=0) == ci  # deterministic under a seed
    assert bootstrap_mean_ci(small, n_boot=2000, seed=1) != ci
    big = [np.tile(m, 20) for m in small]  # the same accuracies on 20x the images
    ci_big = bootstrap_mean_ci(big, n_boot=2000, seed=0)
    assert ci_big.mean == pytest.approx(ci.mean) and ci_big.high - ci_big.low < (ci.high - ci.low) / 3
    # one dataset of n images: the mean is its accuracy and the interval its Wilson interval (what its cell shows),
    # at any level, close to the normal approximation of a binomial proportion
    one = bootstrap_mean_ci({"d": np.arange(400) < 120}, n_boot=4000, seed=0)
    assert (one.low, one.high) == wilson_interval(120, 400)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert one.low == pytest.approx(0.3 - half, abs=0.01) and one.high == pytest.approx(0.3 + half, abs=0.01)
    wide = bootstrap_mean_ci([np.arange(400) < 120], level=0.99)
    assert (wide.low, wide.high) == pytest.approx(wilson_interval(120, 400, 2.5758293035489004))
    assert tuple(bootstrap_mean_ci([np.ones(10, bool), np.ones(3, bool)])) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError):
        bootstrap_mean_ci([np.ones(0, bool)])


# ----------------------------------------------------------------------------------------------- pairing logic

_CLEAN = json.dumps({"attack": {"name": "clean"}, "attack_seed": None, "profile": {"normalization": "clip"}})
_PGD = json.dumps({"attack": {"name": "pgd", "eps_255": 1.0}, "attack_seed": 0, "profile": {"normalization": "clip"}})
_PGD_IMNET = _PGD.replace('"clip"', '"imagenet"')


def _row(method, dataset, table, protocol, indices="s1", model="m", *, mask):
    return {
        "method": method,
        "method_id": method.split("(")[0],
        "model": model,
        "weights": "w",
        "dataset": dataset,
        "dataset_name": dataset.upper(),
        "n": len(mask),
        "indices_sha256": indices,
        "content_sha256": "c",
        "accuracy": 100 * float(np.mean(mask)),
        "eps_255": 0.0 if table == "Clean" else 1.0,
        "table": table,
        "protocol": protocol,
        "created_utc": "2026-01-01T00:00:00+00:00",
        "record": f"{method}|{dataset}|{table}|{protocol}|{indices}|{model}",
    }


def _frame(rows_and_masks):
    rows, masks = [], {}
    for args, mask in rows_and_masks:
        r = _row(*args, mask=np.asarray(mask, bool)) if not isinstance(args, dict) else args
        rows.append(r)
        masks[r["record"]] = np.asarray(mask, bool)
    return pd.DataFrame(rows), masks.__getitem__


def test_compare_pairs_only_same_images_threat_and_protocol():
    a_clean, b_clean = _paired(10, 2, both=20, neither=8)
    a_pgd, b_pgd = _paired(1, 0, both=3, neither=36)
    df, mask_of = _frame(
        [
            (("A", "cifar10", "Clean", _CLEAN), a_clean),
            (("B", "cifar10", "Clean", _CLEAN), b_clean),
            (("A", "cifar10", "PGD", _PGD), a_pgd),
            (("B", "cifar10", "PGD", _PGD), b_pgd),
            (("B", "cifar10", "PGD", _PGD_IMNET), b_pgd),  # another protocol: never paired with A's PGD record
            (("A", "synthetic", "Clean", _CLEAN), a_clean),
            (("B", "synthetic", "Clean", _CLEAN, "s2"), b_clean),  # other images of the same dataset
        ]
    )
    comp = compare(df, "A", "B", alpha=0.05, mask_of=mask_of)
    assert len(comp.pairs) == 2
    clean = comp.pairs[comp.pairs["table"] == "Clean"].iloc[0]
    assert (clean["dataset"], clean["n"], clean["b"], clean["c"], clean["test"]) == ("cifar10", 40, 10, 2, "exact")
    assert clean["p_value"] == pytest.approx(79 / 2048)
    assert clean["acc_a"] == pytest.approx(75.0) and clean["diff"] == pytest.approx(100 * 8 / 40)
    pgd = comp.pairs[comp.pairs["table"] == "PGD"].iloc[0]
    assert (pgd["b"], pgd["c"], pgd["p_value"]) == (1, 0, 1.0)
    # Holm over the two pairs: the smaller p doubled, 0.077 > 0.05, so the nominally significant p = 0.039 is not
    assert clean["p_holm"] == pytest.approx(2 * 79 / 2048) and not clean["significant"]
    assert list(comp.pairs["table"]) == ["Clean", "PGD"]  # clean first
    assert sorted(zip(comp.unpaired["side"], comp.unpaired["dataset"], strict=True)) == [
        ("A", "synthetic"),
        ("B", "cifar10"),
        ("B", "synthetic"),
    ]
    assert sorted(comp.unpaired["reason"]) == [
        "A was measured on other images",
        "A was measured under another protocol",
        "B was measured on other images",
    ]
    text = render(comp)
    assert "Holm-Bonferroni" in text and "over all 2 pairs" in text and "Unpaired" in text
    assert "| CIFAR10" in text and "+20.00" in text and "0.0386" in text
    # two PGD protocols share a threat label: a protocol column says which, and the footer what differs
    assert "P1" in text and "normalization=imagenet" in text
    csv = comparison_frame(comp)
    assert list(csv["status"]).count("paired") == 2 and set(csv["status"]) == {"paired", "only A", "only B"}


def test_compare_bad_selections():
    m = [True, False]
    df, mask_of = _frame(
        [
            (("A", "d", "Clean", _CLEAN), m),
            (("B", "d", "Clean", _CLEAN), m),
            (("B", "d", "Clean", _CLEAN, "s1", "other-model"), m),
        ]
    )
    with pytest.raises(ZSBenchError, match=r"no records of 'nope'; method labels present: A, B$"):
        compare(df, "nope", "B", mask_of=mask_of)
    with pytest.raises(ZSBenchError, match="2 evaluated models"):
        compare(df, "A", "B", mask_of=mask_of)
    assert len(compare(df, "A", "B · other-model", mask_of=mask_of).pairs) == 1
    with pytest.raises(ZSBenchError, match="same records"):
        compare(df, "A", "A · m", mask_of=mask_of)
    with pytest.raises(ZSBenchError, match="alpha"):
        compare(df, "A", "B · m", alpha=1.5, mask_of=mask_of)
    # nothing in common: listed, nothing compared
    df_apart, mask_apart = _frame([(("A", "d", "Clean", _CLEAN), m), (("B", "e", "Clean", _CLEAN), m)])
    comp = compare(df_apart, "A", "B", mask_of=mask_apart)
    assert comp.pairs.empty and len(comp.unpaired) == 2
    assert "No pairs" in render(comp) and "B has no record on this dataset" in render(comp)
    assert list(comparison_frame(comp)["status"]) == ["only A", "only B"]
    bad = {**_frame([(("A", "d", "Clean", _CLEAN), m)])[0].iloc[0].to_dict(), "n": 3}
    df2, mask_of2 = _frame([(bad, m), (("B", "d", "Clean", _CLEAN), m)])
    with pytest.raises(ZSBenchError, match="per-example"):
        compare(df2, "A", "B", mask_of=mask_of2)


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory):
    """Real records: clip and a weight interpolation towards another random tiny model, on the same 64 images."""
    root = tmp_path_factory.mktemp("compare")
    other = load_model(ModelSpec("zsbench-tiny", "random", init_seed=1))
    theta1 = root / "theta1.pth.tar"
    torch.save({"vision_encoder_state_dict": other.model.visual.state_dict()}, theta1)
    cfg = RunConfig(
        methods=("clip", "interpolation"),
        datasets=("synthetic",),
        model=ModelSpec("zsbench-tiny", "random"),
        threats=(Threat("pgd", "linf", 1 / 255, 2, 1 / 255),),
        data_root=root / "data",
        out_dir=root / "out",
        cache_dir=root / "cache",
        n=64,
        device="cpu",
        progress=False,
        method_options={"interpolation": {"theta1": str(theta1), "alpha": "1"}},
    )
    run(cfg, echo=lambda s: None)
    return root / "out"


def test_compare_cli_on_real_records(two_methods, tmp_path, capsys):
    out = two_methods
    csv = tmp_path / "cmp.csv"
    assert main(["compare", "clip", "interpolation", "--out", str(out), "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    assert "| Synthetic | Clean" in text and "| Synthetic | PGD-2 L∞ ε=1/255" in text
    assert "Holm-Bonferroni" in text and "significant (α=0.05)" in text
    table = pd.read_csv(csv)
    assert list(table["status"]) == ["paired", "paired"]
    # the numbers are the records': accuracies and b - c from the stored per-example results
    from robustbench_zs.report.leaderboard import records_frame

    df = records_frame(out)
    for _, r in table.iterrows():
        acc = df[(df["table"] == r["table"])].set_index("method_id")["accuracy"]
        assert r["acc_a"] == pytest.approx(acc["clip"]) and r["acc_b"] == pytest.approx(acc["interpolation"])
        assert r["b"] - r["c"] == round(r["diff"] * r["n"] / 100)
        assert r["n"] == 64
    assert main(["compare", "clip", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method labels present: clip, interpolation(" in err
    assert main(["compare", "clip", "interpolation", "--out", str(tmp_path / "none")]) == 2
    assert "no records under" in capsys.readouterr().err
