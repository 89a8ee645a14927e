"""Prompt sets: the paper's single prompts, the curated ensembles, and user overrides."""

from __future__ import annotations

import json

import pytest
from dataset_fixtures import write_cifar10, write_cifar100, write_tinyimagenet

from robustbench_zs.cli import main
from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.prompts import load_overrides, prompt_set
from robustbench_zs.errors import ZSBenchError


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, n_test=4)
    write_cifar100(root, n_test=4)
    write_tinyimagenet(root, n_val_per_class=1)
    ids = ("cifar10", "cifar100", "tinyimagenet", "synthetic")
    return {d: (DATASETS.get(d), DATASETS.get(d).loader(root, DATASETS.get(d).eval_split)) for d in ids}


@pytest.mark.parametrize(
    "ds,paper,ensemble,n_templates",
    [
        ("cifar10", "This is a photo of a airplane", "a photo of a airplane.", 18),
        ("cifar100", "This is a photo of a apple", "a photo of a apple.", 18),
        ("tinyimagenet", "This is a photo of a goldfish", "a bad photo of a goldfish.", 80),
        ("synthetic", "This is a photo of a apple", "a photo of a apple.", 18),
    ],
)
def test_first_prompt_of_each_set(loaded, ds, paper, ensemble, n_templates):
    spec, data = loaded[ds]
    names, templates, rec = prompt_set(spec, data, "paper")
    assert rec == "paper" and templates[0].format(names[0]) == paper and len(names) == spec.num_classes
    names, templates, rec = prompt_set(spec, data, "ensemble")
    assert rec == "ensemble" and len(templates) == n_templates and templates[0].format(names[0]) == ensemble
    assert len(names) == spec.num_classes


def test_tinyimagenet_names_paper_vs_curated(loaded):
    spec, data = loaded["tinyimagenet"]
    i = data.wnids.index("n01629819")
    assert prompt_set(spec, data, "paper")[0][i] == "european fire salamander"
    assert prompt_set(spec, data, "ensemble")[0][i] == "fire salamander"
    j = data.wnids.index("n02106662")
    assert prompt_set(spec, data, "paper")[0][j] == "german shepherd"
    assert prompt_set(spec, data, "ensemble")[0][j] == "German Shepherd Dog"


def test_cifar100_paper_names_are_cleaned(loaded):
    spec, data = loaded["cifar100"]
    names = prompt_set(spec, data, "paper")[0]
    assert "aquarium fish" in names and "maple tree" in names and not any("_" in n for n in names)


def test_overrides_replace_and_are_recorded(loaded):
    spec, data = loaded["cifar10"]
    over = {"cifar10": {"templates": ["a tiny photo of a {}."]}}
    names, templates, rec = prompt_set(spec, data, "paper", over)
    assert templates == ["a tiny photo of a {}."] and names[0] == "airplane" and rec.startswith("paper+override:")
    with pytest.raises(ZSBenchError, match="3 class names, the dataset has 10"):
        prompt_set(spec, data, "paper", {"cifar10": {"classnames": ["a", "b", "c"]}})
    with pytest.raises(ZSBenchError, match="must contain"):
        prompt_set(spec, data, "paper", {"cifar10": {"templates": ["no placeholder"]}})
    with pytest.raises(ZSBenchError, match="unknown prompt set"):
        prompt_set(spec, data, "fancy")


def test_override_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ZSBenchError, match="not valid JSON"):
        load_overrides(bad)
    bad.write_text(json.dumps({"cifar10": ["x"]}))
    with pytest.raises(ZSBenchError, match="expected"):
        load_overrides(bad)
    with pytest.raises(ZSBenchError, match="cannot read"):
        load_overrides(tmp_path / "missing.json")


def test_ensemble_run_is_recorded_and_kept_apart(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["run", "--datasets", "synthetic", "--n", "16", "--attack", "none", "--out", str(out)]
    base += ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
    assert main([*base, "--prompts", "paper"]) == 0 and main([*base, "--prompts", "ensemble"]) == 0
    recs = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    assert sorted(r["profile"]["prompts"] for r in recs) == ["ensemble", "paper"]
    assert {len(r["profile"]["templates"]) for r in recs} == {1, 18}
    md = (out / "leaderboard.md").read_text()
    assert md.count("## Clean") == 2 and "prompts ensemble" in md
