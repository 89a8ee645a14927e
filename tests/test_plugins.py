"""Plugins: a package outside robustbench_zs adds a method, an attack and a dataset through entry points.

The example plugin lives in ``tests/plugin_pkg`` and is installed into the test venv by tox (``tox.ini``'s deps);
these tests then use it exactly as a researcher's own package would be used: nothing in robustbench_zs names it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution
from pathlib import Path

import pytest

import robustbench_zs.registry as registry_mod
from robustbench_zs.attacks import ATTACKS
from robustbench_zs.cli import main
from robustbench_zs.datasets import DATASETS
from robustbench_zs.methods import METHODS
from robustbench_zs.registry import BUILTIN, Registry

PLUGIN = "zsbench-example-plugin"
HERE = Path(__file__).resolve().parent
TINY = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def installed():
    try:
        distribution(PLUGIN)
    except PackageNotFoundError:
        pytest.fail(
            f"the example plugin is not installed in this venv: pip install {HERE / 'plugin_pkg'} (tox does it)"
        )


def test_the_entry_point_names_are_the_ids_whatever_the_objects_call_themselves():
    cls = METHODS.get("clean_adv_mix")
    assert cls.id == "clean_adv_mix" and cls.__name__ == "CleanAdvMix"  # the class itself says id = "mix"
    assert "mix" not in METHODS
    assert DATASETS.get("stripes").id == "stripes" and ATTACKS.get("fgsm").name == "fgsm"
    for reg, name in ((METHODS, "clean_adv_mix"), (ATTACKS, "fgsm"), (DATASETS, "stripes")):
        assert reg.origin(name) == PLUGIN
    assert METHODS.origin("tecoa") == BUILTIN


@pytest.mark.parametrize("what,name", [("methods", "clean_adv_mix"), ("attacks", "fgsm"), ("datasets", "stripes")])
def test_zsbench_list_shows_the_plugins_and_where_they_come_from(what, name):
    # the installed console script, in a process of its own: the entry points as any user's shell finds them
    zsbench = Path(sys.executable).with_name("zsbench")
    out = subprocess.run([str(zsbench), "list", what], capture_output=True, text=True, check=True).stdout
    (row,) = [line for line in out.splitlines() if line.startswith(name + " ")]
    assert PLUGIN in row


def test_a_plugins_method_attack_and_dataset_train_run_and_rank(tmp_path, capsys):
    out, models = tmp_path / "results", tmp_path / "models"
    argv = ["run", *TINY, "--methods", "clip,clean_adv_mix", "--datasets", "stripes", "--attack", "pgd,fgsm"]
    argv += ["--eps", "1", "--steps", "2", "--train-dataset", "stripes", "--prompts", "paper"]
    argv += ["--set", "clean_adv_mix.epochs=1", "--set", "clean_adv_mix.batch_size=64"]
    argv += ["--out", str(out), "--models-dir", str(models), "--data-root", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "clean_adv_mix: no checkpoint" in printed and "training it first" in printed
    (ckpt,) = [p for p in models.iterdir() if (p / "meta.json").is_file()]
    assert json.loads((ckpt / "meta.json").read_text())["method"] == "clean_adv_mix"
    records = [json.loads(p.read_text()) for p in sorted((out / "records").rglob("*.json"))]
    got = sorted((r["method"], r["dataset"]["id"], r["attack"]["name"]) for r in records)
    assert got == sorted((m, "stripes", a) for m in ("clip", "clean_adv_mix") for a in ("clean", "pgd", "fgsm")), got
    fgsm = next(r for r in records if r["method"] == "clean_adv_mix" and r["attack"]["name"] == "fgsm")
    assert fgsm["attack"]["steps_fixed"] == 1 and fgsm["model"]["checkpoint"].startswith("sha256:")
    board = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "Clean/adversarial mix" in board or "clean_adv_mix" in board
    csv = (out / "leaderboard.csv").read_text(encoding="utf-8")
    assert "clean_adv_mix" in csv and "FGSM" in csv
    # run again: everything is found, nothing is computed or trained again
    assert main(argv) == 0
    assert "training it first" not in capsys.readouterr().out


def _registry_with(monkeypatch, *eps: EntryPoint) -> Registry:
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [e for e in eps if e.group == group])
    reg: Registry[object] = Registry("thing", group="test.things")
    reg.add("taken", 0)
    return reg


def test_a_plugin_that_fails_to_load_is_one_warning_and_the_rest_works(monkeypatch):
    eps = [
        EntryPoint("broken", "no_such_module_for_zsbench:Thing", "test.things"),
        EntryPoint("noattr", "json:no_such_name", "test.things"),
        EntryPoint("taken", "json:dumps", "test.things"),
        EntryPoint("good", "json:dumps", "test.things"),
    ]
    reg = _registry_with(monkeypatch, *eps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.names() == ["taken", "good"]
    lines = sorted(str(w.message) for w in caught)
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert "thing plugin 'broken'" in lines[0] and "ModuleNotFoundError" in lines[0] and "skipped" in lines[0]
    assert "'noattr'" in lines[1] and "AttributeError" in lines[1]
    assert "'taken'" in lines[2] and "taken by robustbench_zs" in lines[2]
    assert reg.origin("good") == "an unknown package" and reg.get("good") is json.dumps


def test_a_plugin_of_the_wrong_kind_is_refused_by_its_registry(monkeypatch):
    import robustbench_zs.datasets.spec as spec_mod
    import robustbench_zs.methods.base as base_mod

    not_a_method = EntryPoint("notamethod", "json:dumps", "robustbench_zs.methods")
    not_a_dataset = EntryPoint("notadataset", "json:dumps", "robustbench_zs.datasets")
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [not_a_method, not_a_dataset])
    methods = Registry("method", group="robustbench_zs.methods", adopt=base_mod.adopt_method)
    datasets = Registry("dataset", group="robustbench_zs.datasets", adopt=spec_mod.adopt_dataset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert methods.names() == [] and datasets.names() == []
    text = " | ".join(str(w.message) for w in caught)
    assert (
        "not a subclass of robustbench_zs.methods.Method" in text
        and "not a robustbench_zs.datasets.DatasetSpec" in text
    )


def test_a_broken_plugin_does_not_break_the_command_line(monkeypatch, capsys):
    broken = EntryPoint("broken", "no_such_module_for_zsbench:Thing", "robustbench_zs.methods")
    fresh = Registry("method", group="robustbench_zs.methods", adopt=METHODS._adopt)
    for name, cls in METHODS.items():
        fresh.add(name, cls, origin=METHODS.origin(name))
    fresh._plugins_loaded = False
    fresh._entries = {k: v for k, v in fresh._entries.items() if fresh._origin[k] == BUILTIN}
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [broken])
    monkeypatch.setattr("robustbench_zs.cli.listing.METHODS", fresh)
    assert main(["list", "methods"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("zsbench: warning: method plugin 'broken'") and "skipped" in line
    assert "tecoa" in captured.out


def test_the_plugin_package_is_where_the_docs_say():
    for doc in ("adding_a_method.md", "adding_an_attack.md", "adding_a_dataset.md"):
        text = (HERE.parent / "docs" / doc).read_text(encoding="utf-8")
        assert "tests/plugin_pkg" in text and "entry-points" in text, doc
    assert os.path.isfile(HERE / "plugin_pkg" / "pyproject.toml")
