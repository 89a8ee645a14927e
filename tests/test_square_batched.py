"""``square_linf``: torchattacks' L-inf Square on a whole batch, with the random numbers of one-image runs."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from robustbench_zs.attacks import autoattack as aa_mod
from robustbench_zs.attacks import square as square_mod
from robustbench_zs.attacks.square import p_selection, square_linf

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 2 / 255
SEEDS = [11, 12345, 7, 2**32 - 5, 0, 99, 424242, 31337]


class OneByOne(nn.Module):
    """The model applied to one image at a time: its batched forward is bit-identical to its one-image forwards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i : i + 1]) for i in range(len(x))])


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


@pytest.fixture(scope="module")
def clf(centroid_classifier):
    model = centroid_classifier.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def batch(synthetic_test, clf):
    x = synthetic_test.images[:8].float().div(255).to(next(clf.parameters()).device)
    y = synthetic_test.labels[:8].to(x.device)
    with torch.no_grad():
        assert torch.equal(clf(x).argmax(1), y), "the test images should all be classified correctly"
    return x, y


def _per_image(model, x, y, seeds, n_queries, loss="margin", n_restarts=1, eps=EPS):
    """The previous AutoAttack code path: torchattacks.Square on one image at a time, seeded per image."""
    sq = torchattacks.Square(
        model,
        norm="Linf",
        eps=eps,
        n_queries=n_queries,
        n_restarts=n_restarts,
        p_init=0.8,
        loss=loss,
        resc_schedule=False,
        seed=0,
        verbose=False,
    )
    out = []
    with torch.random.fork_rng():
        for i in range(len(x)):
            sq.seed = seeds[i]
            out.append(sq.perturb(x[i : i + 1], y[i : i + 1]))
    return torch.cat(out)


def _fooled(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) != y


# ------------------------------------------------------------------------------------- same as one image at a time
@pytest.mark.parametrize("loss,n_restarts", [("margin", 1), ("ce", 2)])
def test_equals_torchattacks_one_image_at_a_time(clf, batch, loss, n_restarts):
    """With forwards that are bit-identical batched or not, the batch gives exactly the per-image torchattacks
    images: each image gets exactly its one-image random numbers."""
    x, y = batch
    model = OneByOne(clf)
    ref = _per_image(model, x, y, SEEDS, 150, loss, n_restarts)
    out = square_linf(model, x, y, EPS, SEEDS, n_queries=150, p_init=0.8, loss=loss, n_restarts=n_restarts)
    fooled = _fooled(clf, ref, y)
    assert 0 < int(fooled.sum()) < len(x), "some images should be fooled and some not, to test both"
    assert torch.equal(out, ref)


def test_equals_torchattacks_with_the_batched_model(clf, batch):
    """The real (batched) classifier: its batched and one-image logits differ in the last bits (about 3e-5 at logit
    scale 100), which could in principle flip a comparison; on these images nothing flips and the images are equal."""
    x, y = batch
    ref = _per_image(clf, x, y, SEEDS, 200)
    out = square_linf(clf, x, y, EPS, SEEDS, n_queries=200, p_init=0.8)
    assert torch.equal(_fooled(clf, out, y), _fooled(clf, ref, y))
    assert torch.equal(out, ref)


def test_draws_the_random_numbers_of_a_one_image_run(clf, batch, monkeypatch):
    """The sequence of torch.rand shapes per image is that of the one-image run: [1, c, 1, w] per restart, then
    [1], [1], [c, 1, 1] per iteration while the image is unbroken; nothing for an image misclassified at the start."""
    x, y = batch
    y = y.clone()
    y[2] = (y[2] + 1) % 10  # misclassified from the start: torchattacks returns it clean and draws nothing for it
    real_rand = torch.rand
    drawn: dict = {}

    def recording(*shape, generator=None, **kw):
        drawn.setdefault(generator, []).append(tuple(shape[0]))
        return real_rand(*shape, generator=generator, **kw)

    monkeypatch.setattr(torch, "rand", recording)
    ref_shapes = []
    for i in range(len(x)):
        drawn.clear()
        _per_image(clf, x[i : i + 1], y[i : i + 1], SEEDS[i : i + 1], 120, n_restarts=2)
        ref_shapes.append(drawn.pop(None, []))
    gens: list = []
    real_gen = torch.Generator

    def keep(*a, **kw):
        g = real_gen(*a, **kw)
        gens.append(g)
        return g

    monkeypatch.setattr(square_mod.torch, "Generator", keep)
    drawn.clear()
    out = square_linf(clf, x, y, EPS, SEEDS, n_queries=120, p_init=0.8, n_restarts=2)
    assert None not in drawn, "the global generator must not be used"
    ours = [drawn.get(g, []) for g in gens]
    assert ours == ref_shapes
    assert ours[2] == [] and torch.equal(out[2], x[2])
    c, w = x.shape[1], x.shape[3]
    for shapes in ours:
        if shapes:
            assert shapes[0] == (1, c, 1, w) and shapes[1:4] == [(1,), (1,), (c, 1, 1)]


# ------------------------------------------------------------------------------------------------ batch size
def test_results_do_not_depend_on_the_batch(clf, batch):
    x, y = batch
    whole = square_linf(clf, x, y, EPS, SEEDS, n_queries=150, p_init=0.8)
    for size in (1, 3):
        parts = [
            square_linf(clf, x[i : i + size], y[i : i + size], EPS, SEEDS[i : i + size], n_queries=150, p_init=0.8)
            for i in range(0, len(x), size)
        ]
        assert torch.equal(torch.cat(parts), whole), size
    # the order within the batch does not matter either
    perm = torch.tensor([5, 0, 7, 2, 6, 1, 4, 3])
    shuffled = square_linf(clf, x[perm], y[perm], EPS, [SEEDS[i] for i in perm.tolist()], n_queries=150, p_init=0.8)
    assert torch.equal(shuffled, whole[perm])


# ---------------------------------------------------------------------------------------------------- validity
def test_outputs_are_valid_and_fooled_images_misclassified(clf, batch):
    x, y = batch
    out = square_linf(clf, x, y, EPS, SEEDS, n_queries=200, p_init=0.8)
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().amax() <= EPS + 1e-7
    fooled = _fooled(clf, out, y)
    assert fooled.any() and not fooled.all()
    # torchattacks' convention: the images it could not fool come back clean
    assert torch.equal(out[~fooled], x[~fooled])
    assert not torch.equal(out[fooled], x[fooled])
    # the global random state is left alone
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    square_linf(clf, x[:2], y[:2], EPS, SEEDS[:2], n_queries=5, p_init=0.8)
    assert torch.equal(torch.rand(2), expected)


def test_stops_early_when_every_image_is_fooled(clf, batch):
    x, y = batch
    model = Counting(clf)
    out = square_linf(model, x, y, 64 / 255, SEEDS, n_queries=1000, p_init=0.8)
    assert _fooled(clf, out, y).all()
    # clean check + random start + one forward per iteration that still had an unbroken image + the verdict
    assert model.calls < 50


def test_schedule_and_arguments():
    assert [p_selection(0.8, it, 5000, False) for it in (0, 10, 11, 50, 51, 4000, 4001, 6001, 8001)] == [
        0.8,
        0.8,
        0.4,
        0.4,
        0.2,
        0.8 / 64,
        0.8 / 128,
        0.8 / 256,
        0.8 / 512,
    ]
    for n_queries, rescale in ((5000, False), (10000, False), (100, True), (5000, True), (7, True)):
        sq = torchattacks.Square(nn.Linear(1, 1), n_queries=n_queries, p_init=0.3, resc_schedule=rescale)
        assert [p_selection(0.3, it, n_queries, rescale) for it in range(n_queries)] == [
            sq.p_selection(it) for it in range(n_queries)
        ]
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="loss"):
        square_linf(nn.Identity(), x, torch.zeros(2, dtype=torch.long), 0.1, [0, 1], n_queries=1, p_init=0.8, loss="l2")
    with pytest.raises(ValueError, match="seeds"):
        square_linf(nn.Identity(), x, torch.zeros(2, dtype=torch.long), 0.1, [0], n_queries=1, p_init=0.8)


# ------------------------------------------------------------------------------------------------- AutoAttack
def test_autoattack_records_the_code_that_runs():
    text = aa_mod.describe(aa_mod.COMPONENTS)["component_code"]["square"]
    assert "square_linf" in text and "L2: torchattacks.Square, one image at a time" in text


def test_autoattack_linf_square_is_the_per_image_torchattacks_run(clf, batch, quick_standard, monkeypatch):
    """AutoAttack's L-inf cascade with square_linf gives the masks and images of the previous per-image torchattacks
    code, and passes each still-robust image its Square seed."""
    from robustbench_zs.attacks.base import Threat

    x, y = batch
    seeds = torch.arange(8) + 500
    t = Threat("autoattack", "linf", 1 / 255)
    settings = {"square": {"n_queries": 100}}
    seen: list = []
    real = aa_mod.square_linf

    def recording(model, xr, yr, eps, sq_seeds, **kwargs):
        seen.append(list(sq_seeds))
        return real(model, xr, yr, eps, sq_seeds, **kwargs)

    monkeypatch.setattr(aa_mod, "square_linf", recording)
    report: dict = {}
    robust = aa_mod.run_autoattack(clf, x, y, [t], seeds, report=report, implementation=aa_mod.COMPONENTS,
                                   settings=settings)[t]  # fmt: skip
    adv = aa_mod.perturb_autoattack(clf, x, y, t, seeds, implementation=aa_mod.COMPONENTS, settings=settings)
    before_square = report[t.slug]["masks"]["fab-t"]
    assert before_square.any(), "Square should have had points to attack"
    assert seen[0] == [aa_mod._square_seed(int(seeds[i])) for i in before_square.nonzero().flatten().tolist()]

    def per_image(model, xr, yr, eps, sq_seeds, **kwargs):
        return _per_image(model, xr, yr, list(sq_seeds), kwargs["n_queries"], kwargs["loss"], kwargs["n_restarts"], eps)

    monkeypatch.setattr(aa_mod, "square_linf", per_image)
    old_report: dict = {}
    old = aa_mod.run_autoattack(clf, x, y, [t], seeds, report=old_report, implementation=aa_mod.COMPONENTS,
                                settings=settings)[t]  # fmt: skip
    old_adv = aa_mod.perturb_autoattack(clf, x, y, t, seeds, implementation=aa_mod.COMPONENTS, settings=settings)
    assert torch.equal(robust, old) and torch.equal(adv, old_adv)
    assert report[t.slug]["robust"] == old_report[t.slug]["robust"]
