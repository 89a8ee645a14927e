"""``clip``: the pre-trained model as it is, evaluated zero-shot."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class ZeroShotCLIP(Method):
    id = "clip"
    name = "CLIP"
    summary = "zero-shot CLIP, no fine-tuning (the --arch/--pretrained weights as they are)"
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
    trains = "nothing"
    needs_labels = False
