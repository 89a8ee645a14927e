"""Contract tests generated from the registries: every registered method, attack and dataset, ours or a plugin's
(the example plugin of tests/plugin_pkg is installed in the test venv), is checked by the same tests.

The behaviour of each kind is tested where it runs: a few training steps of every trainable method
(test_training.py::test_a_few_steps_lower_the_loss), the verdict and images of every attack
(test_attack_interface.py), the spec of every dataset (test_registry.py::test_dataset_spec_contract). Here: what
each entry declares, and what the engine relies on without running a whole training or evaluation.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from robustbench_zs.attacks import ATTACKS, NORMS, PRECISIONS, Attack
from robustbench_zs.datasets import DATASETS
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods import METHODS, Method, MethodConfig
from robustbench_zs.methods.base import TRAINS, check_method
from robustbench_zs.models import ModelSpec, load_model

TINY = ModelSpec("zsbench-tiny", "random", init_seed=0)
TINY_RN = ModelSpec("zsbench-tiny-rn", "random", init_seed=0)


def _backbone_for(method: Method) -> ModelSpec:
    """The first tiny backbone the method accepts (TWINS needs BatchNorm, so the tiny ResNet)."""
    for spec in (TINY, TINY_RN):
        try:
            method.check_model(load_model(spec).model, spec.arch)
            return spec
        except Exception:  # noqa: BLE001  (check_model refuses with a ZSBenchError; try the next backbone)
            continue
    raise AssertionError(f"{method.id} accepts neither tiny backbone")


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_declares_a_complete_class(name):
    cls = METHODS.get(name)
    check_method(cls)
    assert cls.id == name and issubclass(cls, Method) and cls.trains in TRAINS
    assert issubclass(cls.Config, MethodConfig)
    config = cls.Config()
    json.dumps(config.to_dict())  # options are stored in records and meta.json
    try:
        config.validate()
    except ZSBenchError as e:  # an option without a default (interpolation's theta1) is asked for in one line
        assert "\n" not in str(e) and f"--set {name}." in str(e), str(e)
    else:
        assert cls.Config.from_overrides({}).to_dict() == config.to_dict()
    json.dumps(cls.recipe.to_dict())


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.trains != "nothing"])
def test_every_trained_state_loads_back_into_a_fresh_encoder(name):
    """What the checkpoint stores is what the method trains, and it loads strictly into a new encoder."""
    cls = METHODS.get(name)
    method = cls()
    spec = _backbone_for(method)
    encoder = method.build_encoder(load_model(spec).model)
    trainable = {id(p) for p in method.trainable_parameters(encoder)}
    assert trainable, f"{name} trains nothing"
    state = method.trained_state(encoder)
    assert state and all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    other = method.build_encoder(load_model(spec).model)
    method.load_trained_state(other, changed)
    again = method.trained_state(other)
    assert again.keys() == state.keys() and all(torch.equal(again[k], changed[k]) for k in state)
    with pytest.raises(Exception, match="missing|unexpected|fit"):
        method.load_trained_state(other, {**changed, "not.a.tensor.of.this.encoder": torch.zeros(1)})


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_declares_what_it_runs(name):
    entry = ATTACKS.get(name)
    assert entry.name == name and entry.description and issubclass(entry.attack, Attack)
    assert set(entry.precisions) <= set(PRECISIONS) and "fp32" in entry.precisions
    assert set(entry.norms) <= set(NORMS) and entry.norms
    json.dumps(dict(entry.fixed_settings))  # stored in every record of the attack
    assert entry.default_steps is None or entry.default_steps > 0


@pytest.mark.parametrize("name", [n for n, s in DATASETS.items() if not s.needs_root])
def test_every_generated_dataset_loads_as_its_spec_says(name):
    spec = DATASETS.get(name)
    for split in spec.splits:
        data = spec.loader(None, split)
        assert len(data) > 0 and len(data.classnames) == spec.num_classes
        image, label = data[0]
        assert 0 <= int(label) < spec.num_classes
        if spec.native_size is not None:
            assert tuple(np.asarray(image).shape[-2:]) == spec.native_size or image.size[::-1] == spec.native_size
    if spec.classnames is not None:
        assert list(spec.loader(None, spec.eval_split).classnames) == list(spec.classnames)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_spec_is_frozen_and_renamable(name):
    """The registry renames a plugin's spec to its entry point's name; every spec must allow that."""
    spec = DATASETS.get(name)
    assert dataclasses.replace(spec, id="renamed").id == "renamed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.id = "changed"  # type: ignore[misc]
