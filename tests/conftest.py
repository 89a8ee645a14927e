"""Shared fixtures: a tiny random-weight CLIP, generated data, and a classifier that PGD has something to attack."""

from __future__ import annotations

import os

import pytest
import torch

from robustbench_zs.datasets import DATASETS
from robustbench_zs.models import NORMALIZATIONS, ModelSpec, ZeroShotClassifier, load_model

TINY = ModelSpec("zsbench-tiny", "random", init_seed=0)
DEVICE = torch.device(os.environ.get("ZSBENCH_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: the tiny models gain nothing from intra-op threads, which thrash when
    other processes share the CPUs; and in-process reruns then round like subprocesses run with OMP_NUM_THREADS=1.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def quick_standard(monkeypatch):
    """AutoAttack's standard components at the small ``quick_attacks.QUICK`` settings, for one test."""
    from quick_attacks import QUICK

    from robustbench_zs.attacks.autoattack import STANDARD

    for name, values in QUICK.items():
        for key, value in values.items():
            monkeypatch.setitem(STANDARD[name], key, value)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads or writes the user's cache, data or results folders."""
    monkeypatch.setenv("ZSBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ZSBENCH_DATA", str(tmp_path / "no-data-here"))
    monkeypatch.setenv("ZSBENCH_RESULTS", str(tmp_path / "results"))


@pytest.fixture(scope="session")
def tiny():
    return load_model(TINY, DEVICE)


@pytest.fixture(scope="session")
def synthetic_test():
    return DATASETS.get("synthetic").loader(None, "test")


@pytest.fixture(scope="session")
def centroid_classifier(tiny):
    """The tiny model's image tower with a nearest-centroid head fitted on the synthetic train split.

    Random text weights give chance accuracy; class-mean image embeddings give a classifier that is accurate on
    clean images, so attacks have accuracy to remove.
    """
    train = DATASETS.get("synthetic").loader(None, "train")
    mean, std = NORMALIZATIONS["clip"]
    probe = ZeroShotClassifier(tiny.model.visual, torch.zeros(10, 32), tiny.image_size, mean, std, 1.0)
    with torch.no_grad():
        feats = probe.features(train.images.float().div(255).to(DEVICE))
    head = torch.stack([feats[train.labels == c].mean(0) for c in range(10)])
    head = torch.nn.functional.normalize(head, dim=-1)
    return ZeroShotClassifier(tiny.model.visual, head, tiny.image_size, mean, std, 100.0).to(DEVICE)


@pytest.fixture(scope="session")
def site_world(tmp_path_factory):
    """Records of clip and of a tecoa checkpoint on the tiny model under the world protocol (site_world.py)."""
    from site_world import make_world

    return make_world(tmp_path_factory.mktemp("site-world"))


@pytest.fixture(scope="session")
def site_submissions(site_world, tmp_path_factory):
    """The submissions of those records (tecoa with its checkpoint, clip), each with its archive."""
    from site_world import make_submissions

    return make_submissions(site_world, tmp_path_factory.mktemp("submissions"))
