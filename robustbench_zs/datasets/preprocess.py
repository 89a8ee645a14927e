"""Preprocessing profiles: how a decoded image becomes the uint8 tensor that the attacks perturb.

- ``paper`` (protocol.md section 4): CIFAR-10/100 and STL-10 stay at native resolution (the model upsamples them
  bicubically inside its forward pass); every other dataset goes through PIL ``Resize(256)`` (bilinear, torchvision's
  default) and ``CenterCrop(224)`` first and is attacked at 224 px.
- ``standard``: the model's own preprocessing as open_clip builds it (resize to the model's input size with its
  interpolation and resize mode, center crop), attacked at the model's input size; with ``attack_resolution="native"``
  the images stay at their native size instead (only for datasets whose images share one size).

Resizing happens on PIL images in uint8, as in the official code (PIL resize, then ``ToTensor``), so a stored uint8
tensor is exactly what the official pipeline would feed, divided by 255.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ZSBenchError
from .spec import DatasetSpec, ImageDataset

PREPROCESS_PROFILES = ("paper", "standard")
ATTACK_RESOLUTIONS = ("model", "native")

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """One image pipeline, fully described by its fields (they go into every record and the tensor-cache key).

    Attributes:
        profile: ``paper`` or ``standard``.
        mode: ``native`` (no resizing), ``shortest`` (resize the shorter side to ``resize``, center crop ``crop``),
            ``squash`` (resize both sides to ``crop``) or ``longest`` (resize the longer side to ``crop``, pad to square).
        resize: target of the shorter side (``shortest`` mode).
        crop: (H, W) of the output (None for ``native``).
        interpolation: PIL filter of the resize.
    """

    profile: str
    mode: str = "native"
    resize: int | None = None
    crop: tuple[int, int] | None = None
    interpolation: str | None = None

    @property
    def is_native(self) -> bool:
        return self.mode == "native"

    def output_size(self, spec: DatasetSpec) -> tuple[int, int] | None:
        """(H, W) of every output image, or None when sizes vary (native mode on a mixed-size dataset)."""
        return spec.native_size if self.is_native else self.crop

    def describe(self, spec: DatasetSpec) -> dict:
        size = self.output_size(spec)
        return {**asdict(self), "attack_resolution": f"{size[0]}x{size[1]}" if size else "native (varies)"}

    def apply(self, im: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 tensor (3, H, W)."""
        if not self.is_native:
            im = self._resize(im)
        arr = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def _resize(self, im: Image.Image) -> Image.Image:
        flt = _PIL_FILTERS[self.interpolation or "bilinear"]
        ch, cw = self.crop
        w, h = im.size
        if self.mode == "squash":
            return im.resize((cw, ch), flt)
        if self.mode == "longest":
            scale = max(ch, cw) / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            canvas = Image.new("RGB", (cw, ch), (0, 0, 0))
            canvas.paste(im.resize((nw, nh), flt), ((cw - nw) // 2, (ch - nh) // 2))
            return canvas
        # shortest side to ``resize`` (torchvision's int-size Resize rule), then center crop (torchvision's rounding)
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), flt)
        if nh < ch or nw < cw:
            raise ZSBenchError(f"center crop {ch}x{cw} is larger than the resized image {nh}x{nw}")
        top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
        return im.crop((left, top, left + cw, top + ch))


def resolve_preprocess(
    profile: str,
    spec: DatasetSpec,
    model_cfg: dict | None = None,
    attack_resolution: str = "model",
    train: bool = False,
) -> Preprocess:
    """The pipeline of ``spec`` under ``profile``.

    Args:
        profile: ``paper`` or ``standard``.
        spec: the dataset.
        model_cfg: the model's own preprocessing (:func:`robustbench_zs.models.loader.model_preprocess_cfg`);
            needed by ``standard``.
        attack_resolution: ``model`` or ``native``; only ``standard`` takes ``native``.
        train: the pipeline of the training split: under ``paper`` the official code's training transform
            (``spec.paper_train_preprocess``: CIFAR-100 is trained at 224 px though attacked at 32 px in evaluation;
            TinyImageNet and ImageNet at 224 px, CIFAR-10 native).
    """
    if profile not in PREPROCESS_PROFILES:
        raise ZSBenchError(f"unknown preprocessing profile {profile!r}; choose one of {', '.join(PREPROCESS_PROFILES)}")
    if attack_resolution not in ATTACK_RESOLUTIONS:
        raise ZSBenchError(
            f"unknown attack resolution {attack_resolution!r}; choose one of {', '.join(ATTACK_RESOLUTIONS)}"
        )
    if profile == "paper":
        if attack_resolution != "model":
            raise ZSBenchError(
                "--attack-resolution native goes with --preprocess standard; the paper profile fixes the resolution "
                "per dataset (native for CIFAR and STL-10, 224 px for the others)"
            )
        rule = (spec.paper_train_preprocess or spec.paper_preprocess) if train else spec.paper_preprocess
        if rule == "native":
            return Preprocess("paper")
        return Preprocess("paper", "shortest", 256, (224, 224), "bilinear")
    if attack_resolution == "native":
        if spec.native_size is None:
            raise ZSBenchError(
                f"--attack-resolution native: the images of {spec.name} differ in size, so they cannot be attacked "
                "in batches at native resolution; use --attack-resolution model"
            )
        return Preprocess("standard")
    if model_cfg is None:
        raise ValueError("the standard profile needs the model's preprocessing config")
    h, w = model_cfg["image_size"]
    mode = model_cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash", "longest"):
        raise ZSBenchError(f"open_clip resize mode {mode!r} is not supported; use --preprocess paper")
    return Preprocess("standard", mode, min(h, w) if mode == "shortest" else None, (h, w), model_cfg["interpolation"])


def pil_item(data: ImageDataset, i: int) -> tuple[Image.Image, int]:
    """Item ``i`` of ``data`` as an RGB PIL image (decoded straight from the file where the dataset has one)."""
    if hasattr(data, "item_pil"):
        return data.item_pil(i)
    img, label = data[i]
    return Image.fromarray(img.permute(1, 2, 0).numpy(), mode="RGB"), label


class PreprocessedDataset(Dataset):
    """``data`` seen through ``preprocess``: items are (uint8 tensor (3, H, W), label)."""

    def __init__(self, data: ImageDataset, preprocess: Preprocess) -> None:
        self.data = data
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.preprocess.is_native:
            return self.data[i]
        im, label = pil_item(self.data, i)
        return self.preprocess.apply(im), label
