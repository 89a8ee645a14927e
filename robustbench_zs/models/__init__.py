"""CLIP backbones, the zero-shot classifier and cached text heads."""

from ..profiles import LOGIT_SCALES, NORMALIZATIONS, HeadKnobs
from .classifier import ZeroShotClassifier
from .loader import RANDOM, TINY_ARCHS, LoadedModel, ModelSpec, load_model
from .text_head import build_text_head, encode_head, text_weights_sha256

__all__ = [
    "LOGIT_SCALES",
    "NORMALIZATIONS",
    "RANDOM",
    "TINY_ARCHS",
    "HeadKnobs",
    "LoadedModel",
    "ModelSpec",
    "ZeroShotClassifier",
    "build_text_head",
    "encode_head",
    "load_model",
    "text_weights_sha256",
]
