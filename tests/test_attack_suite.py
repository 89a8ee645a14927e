"""The attack suite inside `zsbench run`: AutoAttack records, sanity checks in records and leaderboards, profiles."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from dataset_fixtures import WRITERS
from quick_attacks import QUICK
from test_autoattack import InputBlind

from robustbench_zs.attacks import ATTACKS, Threat
from robustbench_zs.attacks.autoattack import STANDARD
from robustbench_zs.attacks.sanity import record_checks
from robustbench_zs.cli import main
from robustbench_zs.cli.run import build_threats
from robustbench_zs.datasets import DATASETS, select_subset
from robustbench_zs.datasets.subset import paper_subsample
from robustbench_zs.engine import runner
from robustbench_zs.engine.evaluator import evaluate
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.report import write_leaderboard
from robustbench_zs.results import per_example
from robustbench_zs.results.schema import result_block

DEVICE = torch.device(os.environ.get("ZSBENCH_TEST_DEVICE", "cpu"))
# the paper's single prompts keep the random tiny model's class embeddings apart, so PGD leaves some points robust
SMOKE = ["run", "--preset", "smoke", "--prompts", "paper"]
TINY = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _records(out, attack=None):
    found = [json.loads(p.read_text()) for p in sorted((out / "records").rglob("*.json"))]
    return [r for r in found if attack is None or r["attack"]["name"] == attack]


# ------------------------------------------------------------------------------------------------ threats from flags
def test_each_attack_gets_its_own_default_steps_and_label():
    threats = build_threats("pgd,apgd-ce,autoattack", "1,4", "linf", None, None, "fp32", given=[])
    labels = [t.label for t in threats]
    assert labels == [
        "PGD-10 L∞ ε=1/255",
        "PGD-10 L∞ ε=4/255",
        "APGD-CE-100 L∞ ε=1/255",
        "APGD-CE-100 L∞ ε=4/255",
        "AutoAttack L∞ ε=1/255",
        "AutoAttack L∞ ε=4/255",
    ]
    aa = threats[-1]
    assert aa.steps == 0 and aa.step_size == 0 and aa.slug == "autoattack-linf-eps4"
    assert threats[2].step_size == 0  # APGD adapts its own step
    assert build_threats("pgd", "2", "linf", 5, None, "bf16", given=[])[0].label == "PGD-5 L∞ ε=2/255 bf16"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attack", "autoattack", "--steps", "20"], "--steps has no effect"),
        (["--attack", "autoattack", "--step-size", "1"], "--step-size has no effect"),
        (["--attack", "autoattack", "--attack-precision", "bf16"], "not bf16"),
        (["--attack", "pgd,none"], "cannot be combined"),
        (["--attack", "nonesuch"], "unknown attack"),
        (["--n", "8", "--paper-subsample"], "drop one of them"),
    ],
)
def test_bad_attack_flags_are_one_line(tmp_path, capsys, argv, message):
    code = main(["run", "--preset", "smoke", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


# ------------------------------------------------------------------------------------------ AutoAttack end to end
@pytest.fixture(scope="module")
def pgd_and_aa_run(tmp_path_factory):
    """One `zsbench run --attack pgd,autoattack --eps 0.25,1` on the tiny model (AutoAttack at QUICK settings)."""
    out = tmp_path_factory.mktemp("aa") / "r"
    with pytest.MonkeyPatch.context() as mp:
        for name, values in QUICK.items():
            for key, value in values.items():
                mp.setitem(STANDARD[name], key, value)
        argv = [*SMOKE, "--out", str(out), "--n", "48", "--attack", "pgd,autoattack", "--eps", "0.25,1"]
        assert main(argv) == 0
    return out


def test_autoattack_and_pgd_run_end_to_end_with_reports_and_checks(pgd_and_aa_run):
    out = pgd_and_aa_run
    aa = _records(out, "autoattack")
    pgd = {r["attack"]["eps_255"]: r for r in _records(out, "pgd")}
    assert len(aa) == 2 and len(pgd) == 2
    for r in aa:
        rep = r["attack_report"]
        assert rep["implementation"] in ("torchattacks components", "fra31/auto-attack")
        assert rep["ran"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and rep["skipped"] == {}
        assert rep["n_target_classes"] == {"apgd-t": 2, "fab-t": 2}  # QUICK; the standard 9 are tested elsewhere
        assert rep["settings"]["square"]["n_queries"] == 20  # what ran is in the record
        # the cascade never gains points, and its last mask is the record's per-example result
        counts = [rep["robust_after"][c] for c in rep["ran"]]
        assert counts == sorted(counts, reverse=True)
        assert rep["per_example"]["robust_after"]["square"] == r["result"]["per_example"]["data"]
        names = {c["name"] for c in r["sanity"]["checks"]}
        assert names == {"zero_gradient_fraction", "robust_above_clean", "square_beats_gradient"}
        # AutoAttack never leaves more points robust than PGD-10 on the same images
        assert np.all(per_example(r) <= per_example(pgd[r["attack"]["eps_255"]]))
    for r in aa:  # the torchattacks components do not depend on the batch size: not part of the record key
        assert ("attack_batch_size" in r["attack"]) is (rep["implementation"] == "fra31/auto-attack")
    for r in pgd.values():
        assert "attack_report" not in r
        assert {c["name"] for c in r["sanity"]["checks"]} == {"zero_gradient_fraction", "robust_above_clean"}
    assert any(r["result"]["correct"] for r in aa), "the checks below need robust points"
    md = (out / "leaderboard.md").read_text()
    assert "## AutoAttack L∞ ε=1/255" in md and "autoattack linf eps 1/255, standard (apgd-ce" in md
    assert "⚠" not in md and "Sanity checks that failed" not in md


def test_leaderboard_flags_autoattack_above_pgd_and_robust_rising_with_eps(pgd_and_aa_run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(pgd_and_aa_run, out)
    # tamper with the PGD record at 0.25/255 so that it breaks every point: AutoAttack is then above PGD there, and
    # PGD's robust accuracy rises from eps 0.25 to eps 1
    pgd_small = next((out / "records").rglob("pgd-linf-eps0.25-*.json"))
    rec = json.loads(pgd_small.read_text())
    rec["result"].update(result_block(np.zeros(rec["result"]["n"], dtype=bool)))  # counts, bits and interval agree
    pgd_small.write_text(json.dumps(rec))
    md = write_leaderboard(out)["markdown"].read_text()
    assert "AA>PGD" in md and "robust↑ε" in md and "## Sanity checks that failed" in md
    assert "AutoAttack leaves" in md


def test_two_class_dataset_runs_autoattack_to_the_end(tmp_path, quick_standard):
    data = tmp_path / "data"
    WRITERS["pcam"](data)
    out = tmp_path / "r"
    argv = ["run", *TINY, "--methods", "clip", "--datasets", "pcam", "--data-root", str(data), "--out", str(out)]
    assert main([*argv, "--attack", "autoattack", "--eps", "4", "--n", "24"]) == 0
    (r,) = _records(out, "autoattack")
    rep = r["attack_report"]
    assert rep["n_classes"] == 2 and rep["ran"] == ["apgd-ce", "fab-t", "square"]
    assert "4 classes" in rep["skipped"]["apgd-t"] and rep["n_target_classes"] == {"fab-t": 1}


def test_undefined_attack_is_skipped_with_a_note_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    """APGD-T on PCAM (2 classes) is undefined: `zsbench run` says so in one line, lists it in the summary as
    skipped-undefined and runs every other (dataset, threat), before and after PCAM."""
    data = tmp_path / "data"
    WRITERS["pcam"](data)
    out = tmp_path / "r"
    summaries = []
    real_run = runner.run

    def keep_summary(*args, **kwargs):
        summaries.append(real_run(*args, **kwargs))
        return summaries[-1]

    monkeypatch.setattr(runner, "run", keep_summary)
    argv = ["run", *TINY, "--methods", "clip", "--data-root", str(data), "--out", str(out), "--n", "8"]
    argv += ["--datasets", "pcam,synthetic", "--attack", "pgd,apgd-t", "--eps", "1", "--steps", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    (note,) = [line for line in printed if "skipped on pcam" in line]
    assert note.startswith("note: APGD-T-2 L∞ ε=1/255 skipped on pcam (undefined): APGD-T's targeted DLR loss")
    assert "at least 4 classes" in note and "has 2" in note
    done = sorted((r["dataset"]["id"], r["attack"]["name"]) for r in _records(out))
    assert done == [
        ("pcam", "clean"),
        ("pcam", "pgd"),
        ("synthetic", "apgd-t"),
        ("synthetic", "clean"),
        ("synthetic", "pgd"),
    ]
    (summary,) = summaries
    (undefined,) = summary.skipped_undefined
    assert (
        undefined["dataset"] == "pcam"
        and undefined["method"] == "clip"
        and undefined["slug"] == "apgd-t-linf-eps1-steps2"
    )
    assert "4 classes" in undefined["reason"] and len(summary.written) == 5
    # the same run again: every defined record exists, the undefined one is noted again, nothing fails
    assert main(argv) == 0
    assert summaries[-1].written == [] and len(summaries[-1].skipped) == 5 and len(summaries[-1].skipped_undefined) == 1
    # the registry says which attacks are undefined where
    assert ATTACKS.get("apgd-t").undefined_for(2) and ATTACKS.get("apgd-t").undefined_for(4) is None
    assert all(ATTACKS.get(n).undefined_for(2) is None for n in ATTACKS.names() if n != "apgd-t")


def test_resumed_autoattack_gives_the_same_per_example_results(
    tmp_path, monkeypatch, centroid_classifier, quick_standard
):
    data = DATASETS.get("synthetic").loader(None, "test")
    sub = select_subset(len(data), 48, seed=3)
    threat = Threat("autoattack", "linf", 2 / 255)
    whole = evaluate(centroid_classifier, data, [threat], subset=sub, batch_size=16, seed=5, progress=False)

    entry = ATTACKS.get("autoattack")
    calls = {"n": 0}

    def dies_on_the_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return entry.run(*args, **kwargs)

    monkeypatch.setitem(ATTACKS._entries, "autoattack", dataclasses.replace(entry, run=dies_on_the_second_batch))
    state = tmp_path / "aa.partial.npz"
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            centroid_classifier, data, [threat], subset=sub, batch_size=16, seed=5, progress=False, state_path=state
        )
    monkeypatch.setitem(ATTACKS._entries, "autoattack", entry)
    attacked = []

    def counting(*args, **kwargs):
        attacked.append(len(args[1]))
        return entry.run(*args, **kwargs)

    monkeypatch.setitem(ATTACKS._entries, "autoattack", dataclasses.replace(entry, run=counting))
    resumed = evaluate(
        centroid_classifier, data, [threat], subset=sub, batch_size=16, seed=5, progress=False, state_path=state
    )
    assert sum(attacked) == 32  # the first batch of 16 was already decided
    assert np.array_equal(resumed.robust[threat], whole.robust[threat])
    assert np.array_equal(resumed.clean, whole.clean)
    assert np.array_equal(resumed.zero_grad, whole.zero_grad)
    rw, rr = whole.reports[threat], resumed.reports[threat]
    assert rr["ran"] == rw["ran"] and set(rr["masks"]) == set(rw["masks"])
    for c in rw["masks"]:
        assert np.array_equal(rr["masks"][c], rw["masks"][c]), c
    assert 0 < whole.robust[threat].sum() < whole.clean.sum()


# ---------------------------------------------------------------------------------------------- sanity in records
def test_input_blind_model_is_flagged_by_the_zero_gradient_check(quick_standard):
    data = DATASETS.get("synthetic").loader(None, "test")
    model = InputBlind().to(DEVICE)
    sub = select_subset(len(data), 32, seed=0)
    threats = [Threat("pgd", "linf", 4 / 255, 5, 1 / 255), Threat("autoattack", "linf", 4 / 255)]
    res = evaluate(model, data, threats, subset=sub, batch_size=16, progress=False)
    assert res.zero_grad.all()
    for t in threats:
        # a model that ignores its input keeps its clean accuracy under every attack...
        assert np.array_equal(res.robust[t], res.clean), t.label
        checks = record_checks(res.clean, res.robust[t], res.above_clean[t], res.zero_grad, res.reports.get(t))
        # ...and the record says why that number is not robustness
        zero = next(c for c in checks if c["name"] == "zero_gradient_fraction")
        assert not zero["passed"] and zero["value"] == 1.0


def test_mixed_profiles_are_not_ranked_together_unless_asked(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["run", "--preset", "smoke", "--out", str(out), "--n", "32", "--eps", "1"]
    assert main(base) == 0
    assert main([*base, "--logit-scale", "1"]) == 0
    recs = _records(out)
    assert {r["profile"]["name"] for r in recs} == {"standard", "custom"}
    md = (out / "leaderboard.md").read_text()
    assert md.count("## Clean") == 2
    assert "logit_scale: '100' vs '1'" in md or "logit_scale: '1' vs '100'" in md
    assert main(["leaderboard", "--out", str(out), "--mix-profiles"]) == 0
    mixed = (out / "leaderboard.md").read_text()
    assert mixed.count("## Clean") == 1 and "[standard]" in mixed and "[custom]" in mixed


# ------------------------------------------------------------------------------------------------------ profiles
def test_paper_profile_sets_every_knob_and_fp16_attacks_run(tmp_path):
    out = tmp_path / "r"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--n", "32", "--eps", "1", "--profile", "paper"]) == 0
    for r in _records(out):
        p = r["profile"]
        assert p["name"] == "paper" and p["normalization"] == "imagenet" and p["logit_scale"] == "1"
        assert p["prompts"] == "paper" and p["preprocess"]["profile"] == "paper" and p["attack_precision"] == "fp16"
    (pgd,) = _records(out, "pgd")
    assert pgd["attack"]["precision"] == "fp16" and "official" in pgd["attack"]["precision_detail"]
    assert pgd["threat_label"] == "PGD-10 L∞ ε=1/255 fp16"


def test_paper_subsample_takes_every_20th_batch_and_says_so(tmp_path):
    sub = paper_subsample(10_000)
    assert sub.n == 512 and sub.selection == "paper_subsample"
    assert list(sub.indices[:3]) == [0, 1, 2] and sub.indices[256] == 5120
    assert paper_subsample(50_000).n == 2560  # the paper's ImageNet numbers are multiples of 1/2560
    out = tmp_path / "r"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--attack", "none", "--paper-subsample"]) == 0
    (r,) = _records(out)
    assert r["dataset"]["selection"] == "paper_subsample" and r["dataset"]["n"] == 256  # 512 images: batch 0 only
    assert r["profile"]["paper_subsample"] is True and r["profile"]["name"] == "custom"


def test_unsupported_precision_is_refused_by_the_runner_too():
    with pytest.raises(ZSBenchError, match="fp32 only"):
        ATTACKS.get("cw").check_precision("fp16")
