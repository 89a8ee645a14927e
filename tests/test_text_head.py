"""The zero-shot head: computed once per (weights, class names, templates), cached on disk, never inside an attack."""

from __future__ import annotations

import torch

from robustbench_zs.attacks import Threat
from robustbench_zs.engine import evaluate
from robustbench_zs.models import NORMALIZATIONS, ZeroShotClassifier, build_text_head, encode_head
from robustbench_zs.models import text_head as th

NAMES = ["apple", "bicycle", "cloud"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def test_cache_is_hit_on_the_second_call(tiny, tmp_path):
    before = th.ENCODE_CALLS["count"]
    h1, info1 = build_text_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES, tmp_path)
    h2, info2 = build_text_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES, tmp_path)
    assert not info1["cache_hit"] and info2["cache_hit"]
    assert th.ENCODE_CALLS["count"] == before + 1
    assert torch.equal(h1.cpu(), h2.cpu())
    assert info1["key"] == info2["key"]
    assert len(list((tmp_path / "text_heads").glob("*.safetensors"))) == 1


def test_key_changes_with_names_templates_and_weights(tiny, tmp_path):
    _, a = build_text_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES, tmp_path)
    _, b = build_text_head(tiny.model, tiny.tokenizer, NAMES[::-1], TEMPLATES, tmp_path)
    _, c = build_text_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES[:1], tmp_path)
    _, d = build_text_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES, tmp_path, text_sha="0" * 64)
    assert len({a["key"], b["key"], c["key"], d["key"]}) == 4


def test_head_is_the_normalized_template_average(tiny):
    head = encode_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES)
    with torch.no_grad():
        per = [
            torch.nn.functional.normalize(
                tiny.model.encode_text(tiny.tokenizer([t.format(n) for t in TEMPLATES])), dim=-1
            )
            for n in NAMES
        ]
    expected = torch.nn.functional.normalize(torch.stack([p.mean(0) for p in per]), dim=-1)
    torch.testing.assert_close(head, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.norm(dim=-1), torch.ones(len(NAMES)))


def test_corrupt_cache_entry_is_recomputed(tiny, tmp_path):
    h1, info = build_text_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES, tmp_path)
    (tmp_path / "text_heads" / f"{info['key']}.safetensors").write_bytes(b"garbage")
    h2, info2 = build_text_head(tiny.model, tiny.tokenizer, NAMES, TEMPLATES, tmp_path)
    assert not info2["cache_hit"] and torch.equal(h1, h2)


def test_text_tower_is_never_called_during_evaluation_or_pgd(tiny, synthetic_test, tmp_path, monkeypatch):
    head, _ = build_text_head(tiny.model, tiny.tokenizer, list(synthetic_test.classnames), ["a {}"], tmp_path)
    mean, std = NORMALIZATIONS["clip"]
    clf = ZeroShotClassifier(tiny.model.visual, head, tiny.image_size, mean, std, 100.0)

    def forbidden(*a, **k):
        raise AssertionError("encode_text called inside the evaluation loop")

    monkeypatch.setattr(tiny.model, "encode_text", forbidden)
    before = th.ENCODE_CALLS["count"]
    res = evaluate(clf, synthetic_test, [Threat("pgd", "linf", 1 / 255, 3, 1 / 255)], batch_size=256)
    assert res.n == len(synthetic_test)
    assert th.ENCODE_CALLS["count"] == before
