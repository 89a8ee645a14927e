"""Registries: duplicates are errors, unknown names list the known ones, the README's tables stay in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_zs import list_attacks, list_datasets, list_methods
from robustbench_zs.attacks import ATTACKS
from robustbench_zs.datasets import DATASETS
from robustbench_zs.errors import UnknownNameError
from robustbench_zs.methods import METHODS
from robustbench_zs.registry import BUILTIN, Registry

README = Path(__file__).resolve().parents[1] / "README.md"


def test_duplicate_registration_is_an_error():
    r: Registry[int] = Registry("thing")
    r.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        r.add("a", 2)


def test_unknown_name_lists_the_known_ones():
    r: Registry[int] = Registry("thing")
    r.add("a", 1)
    r.add("b", 2)
    with pytest.raises(UnknownNameError, match="unknown thing 'c'; known things: a, b"):
        r.get("c")


@pytest.mark.parametrize(
    "names,registry", [(list_methods, METHODS), (list_datasets, DATASETS), (list_attacks, ATTACKS)]
)
def test_readme_tables_list_every_registered_name(names, registry):
    """Every name of ours is in the README; plugins' names (from other packages, e.g. the example plugin) are not."""
    text = README.read_text(encoding="utf-8")
    for name in names():
        if registry.origin(name) == BUILTIN:
            assert f"| `{name}` |" in text, f"{name} is registered but missing from the README's tables"


@pytest.mark.parametrize("ds_id", DATASETS.names())
def test_dataset_spec_contract(ds_id):
    spec = DATASETS.get(ds_id)
    assert spec.id == ds_id and spec.eval_split in spec.splits
    assert spec.templates and all("{}" in t for t in spec.templates)
    if spec.classnames is not None:
        assert len(spec.classnames) == spec.num_classes
        assert len(set(spec.classnames)) == spec.num_classes
    assert spec.layout and spec.source


def test_readme_python_example_runs(monkeypatch, tmp_path) -> None:
    """The README's "From Python" block, executed as written (the tiny model keeps it fast)."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block.replace("steps=10", "steps=1"), "README.md", "exec"), namespace)
    assert 0.0 <= namespace["result"].accuracy() <= 1.0
