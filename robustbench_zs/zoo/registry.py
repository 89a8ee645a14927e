"""The zoo's table: published robust CLIP image encoders, where to get them and what is known about each file.

Every fact here was read from the release itself (the project's README, the Hugging Face model card or file page)
and the ``note`` of an entry or source says where, and what could not be confirmed. A ``sha256`` is set only where
the host publishes it (Hugging Face shows the sha256 of every LFS file); elsewhere it is ``None`` and ``zsbench models
download`` records the sha256 it computed, marked as not verified against a published value.

Training radii are L-inf, in units of 1/255, as the papers state them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry

#: What a file holds; :func:`robustbench_zs.train.checkpoint.load_visual_state` reads all three.
FORMATS = {
    "open_clip": "a whole open_clip model state dict (visual.* plus the text tower, which is ignored)",
    "visual": "a state dict of open_clip's model.visual",
    "tecoa_official": "the official TeCoA / PMG-AFT training-script file (vision_encoder_state_dict, OpenAI key names)",
}

HF_PREFIX = "hf-hub:"
#: A file shipped inside this package: ``package:<path relative to the package folder>``.
PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class Source:
    """One downloadable file of an entry.

    Attributes:
        url: an ``https://`` URL of the file, or ``hf-hub:<owner>/<repo>`` (then ``file`` is the file in that repo).
        file: the file name: in the hub repo, and the name it is saved under in ``<models>/zoo/<id>/``. ``None`` for
            a manual source whose file name is not known.
        format: one of :data:`FORMATS`.
        sha256: the sha256 the host publishes for this file, or ``None`` when none is known.
        size: its size in bytes where published.
        manual: the URL is a page or folder, not a file: the file must be downloaded by hand.
        note: where the facts come from and what is not confirmed.
    """

    url: str
    file: str | None
    format: str
    sha256: str | None = None
    size: int | None = None
    manual: bool = False
    note: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown zoo file format {self.format!r}; known: {', '.join(FORMATS)}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.url}: sha256 must be 64 lower-case hex digits")
        if not self.manual and not self.file:
            raise ValueError(f"{self.url}: a downloadable source needs a file name")

    @property
    def packaged(self) -> bool:
        return self.url.startswith(PACKAGE_PREFIX)

    @property
    def packaged_path(self) -> Path:
        return Path(__file__).resolve().parent.parent / self.url[len(PACKAGE_PREFIX) :]

    @property
    def http_url(self) -> str:
        """The URL to fetch: hub ids become ``https://huggingface.co/<repo>/resolve/main/<file>``."""
        if self.url.startswith(HF_PREFIX):
            return f"https://huggingface.co/{self.url[len(HF_PREFIX) :]}/resolve/main/{self.file}"
        return self.url

    @property
    def label(self) -> str:
        """Short form for tables: the hub id, the shipped file, or the host of a direct URL."""
        if self.url.startswith((HF_PREFIX, PACKAGE_PREFIX)):
            return self.url
        host = self.url.split("://", 1)[-1].split("/", 1)[0]
        return f"{host} (manual)" if self.manual else host


@dataclass(frozen=True)
class ZooEntry:
    """A published checkpoint.

    Attributes:
        id: the zoo id, used as ``zsbench models download ID`` and ``--checkpoint METHOD=zoo:ID``.
        method: the method id of this benchmark's registry (``tecoa``, ``fare``, ...), or the paper's own name where
            the method is not registered here (``tga_zsr``).
        arch: the open_clip architecture (``ViT-L-14``).
        pretrained: the open_clip pretrained tag it was fine-tuned from; evaluate it with ``--pretrained`` set to
            this, so that the text tower is the one the image encoder was trained against.
        eps: the training radius in units of 1/255.
        norm: the training threat model (``linf``).
        train_data: what it was fine-tuned on.
        sources: the files to try, in order; the first that downloads is kept.
        license: the license stated for the weights or their repository; ``None`` when none was found.
        paper: the paper that trained it.
        project: the page or repository that announces the release.
        note: anything else a user should know.
    """

    id: str
    method: str
    arch: str
    pretrained: str
    eps: float
    norm: str
    train_data: str
    sources: tuple[Source, ...]
    license: str | None
    paper: str
    project: str
    note: str | None = None

    @property
    def published_sha256(self) -> bool:
        return any(s.sha256 for s in self.sources)

    @property
    def manual(self) -> bool:
        return all(s.manual for s in self.sources)


ROBUSTVLM = "https://github.com/chs20/RobustVLM"
ROBUSTVLM_PAPER = (
    "Schlarmann, Singh, Croce, Hein: Robust CLIP: Unsupervised Adversarial Fine-Tuning of Vision Embeddings for "
    "Robust Large Vision-Language Models, ICML 2024 (arXiv:2402.12336)"
)
PERCEPTUAL_PAPER = (
    "Croce, Schlarmann, Singh, Hein: Adversarially Robust CLIP Models Can Induce Better (Robust) Perceptual Metrics, "
    "SaTML 2025; trained with the code of " + ROBUSTVLM_PAPER
)
TECOA_PAPER = (
    "Mao, Geng, Yang, Wang, Vondrick: Understanding Zero-Shot Adversarial Robustness for Large-Scale Models, "
    "ICLR 2023 (arXiv:2212.07016)"
)
_NEXTCLOUD = "https://nc.mlcloud.uni-tuebingen.de/index.php/s"
_HF_BIN = "open_clip_pytorch_model.bin"
_HF_SAFETENSORS = "open_clip_model.safetensors"
_L14_NOTE = (
    "RobustVLM README: ViT-L/14 from OpenAI CLIP, adversarially fine-tuned for two epochs on ImageNet; the same "
    "weights on the hub (model card) and as a visual state dict on the authors' Nextcloud (second source)"
)
_NEXTCLOUD_NOTE = (
    "direct link from the RobustVLM README; the README loads these files with model.visual.load_state_dict, so "
    "they hold the image encoder only; no sha256 is published"
)
_B32_OPENAI_NOTE = (
    "listed in the RobustVLM README's 'Additional Models' table with a Nextcloud link; the README does not say "
    "what they were fine-tuned on (ImageNet, as for every other RobustVLM model, is assumed) nor what the file "
    "holds (a visual state dict like the ViT-L/14 Nextcloud files is assumed; load_visual_state reads either)"
)
_LAION_HUB_NOTE = (
    "hub repo linked from the RobustVLM README's 'Additional Models' table (from the perceptual-metrics follow-up); "
    "the hub page carries the Safetensors tag; the file names are open_clip's hub names, the .bin is the fallback"
)


def _hf(repo: str, file: str, *, sha256: str | None = None, size: int | None = None, note: str | None = None) -> Source:
    return Source(f"{HF_PREFIX}{repo}", file, "open_clip", sha256=sha256, size=size, note=note)


def _nextcloud(share: str, file: str, note: str = _NEXTCLOUD_NOTE) -> Source:
    return Source(f"{_NEXTCLOUD}/{share}/download/{file}", file, "visual", note=note)


_ENTRIES = [
    ZooEntry(
        id="tecoa-official-vit-b-32",
        method="tecoa",
        arch="ViT-B-32",
        pretrained="openai",
        eps=1,
        norm="linf",
        train_data="ImageNet",
        sources=(
            Source(
                "https://cv.cs.columbia.edu/mcz/TeCoA/TeCoAmodel_best.pth.tar",
                "TeCoAmodel_best.pth.tar",
                "tecoa_official",
                note="linked as 'TeCoA w/ Finetuning' (38.18% robust, 55.97% clean) in one stored revision of the "
                "ZSRobust4FoundationModel README and no longer in another, so the link may be gone; no sha256 is "
                "published; layout from the repository's finetuning.py (save_checkpoint with "
                "vision_encoder_state_dict of clip.load('ViT-B/32'))",
            ),
        ),
        license=None,
        paper=TECOA_PAPER,
        project="https://github.com/cvlab-columbia/ZSRobust4FoundationModel",
        note="training eps is not stated beside the link: 1/255 is the README's example fine-tuning command "
        "(finetuning.py's default is 2); no license file was found in the repository",
    ),
    ZooEntry(
        id="robustvlm-tecoa2-vit-l-14",
        method="tecoa",
        arch="ViT-L-14",
        pretrained="openai",
        eps=2,
        norm="linf",
        train_data="ImageNet (2 epochs)",
        sources=(
            _hf(
                "chs20/tecoa2-clip",
                _HF_BIN,
                sha256="c10d93237ca654e85b9977b6bb9195ea017e0e87ab15145e67dcf92245bd4af4",
                size=1710635909,
                note="sha256 and size from the LFS pointer of hub commit fd40d04 ('Upload files'); the repo holds "
                "no safetensors file",
            ),
            _nextcloud("5SQzfAbp8JHS3o7", "tecoa_eps_2.pt"),
        ),
        license="MIT",
        paper=ROBUSTVLM_PAPER + "; method of " + TECOA_PAPER,
        project=ROBUSTVLM,
        note=_L14_NOTE,
    ),
    ZooEntry(
        id="robustvlm-tecoa4-vit-l-14",
        method="tecoa",
        arch="ViT-L-14",
        pretrained="openai",
        eps=4,
        norm="linf",
        train_data="ImageNet (2 epochs)",
        sources=(
            _hf(
                "chs20/tecoa4-clip",
                _HF_BIN,
                sha256="7d85c081ffe48ee9a31fa4a025384212bc0d1f27ca6378cc44297cc4f6dfad37",
                size=1710635909,
                note="sha256 and size from the LFS pointer of hub commit a6760a9 ('Upload files'); the repo holds "
                "no safetensors file",
            ),
            _nextcloud("92req4Pak5i56tX", "tecoa_eps_4.pt"),
        ),
        license="MIT",
        paper=ROBUSTVLM_PAPER + "; method of " + TECOA_PAPER,
        project=ROBUSTVLM,
        note=_L14_NOTE,
    ),
    ZooEntry(
        id="robustvlm-fare2-vit-l-14",
        method="fare",
        arch="ViT-L-14",
        pretrained="openai",
        eps=2,
        norm="linf",
        train_data="ImageNet (2 epochs)",
        sources=(
            _hf(
                "chs20/fare2-clip",
                _HF_BIN,
                sha256="9fb1f8759c89905809da8ce761a4b90e1c22beaaea7c68f3917647eeb0a230a7",
                note="sha256 from the hub's file page at revision 6bc37e8 (file uploaded in d785225); exact size "
                "not published there (1.71 GB); the repo holds no safetensors file",
            ),
            _nextcloud("d83Lqm8Jpowxp4m", "fare_eps_2.pt"),
        ),
        license="MIT",
        paper=ROBUSTVLM_PAPER,
        project=ROBUSTVLM,
        note=_L14_NOTE,
    ),
    ZooEntry(
        id="robustvlm-fare4-vit-l-14",
        method="fare",
        arch="ViT-L-14",
        pretrained="openai",
        eps=4,
        norm="linf",
        train_data="ImageNet (2 epochs)",
        sources=(
            _hf(
                "chs20/fare4-clip",
                _HF_BIN,
                note="file name as in the sibling repos (fare2-clip, tecoa2-clip, tecoa4-clip); this repo's file "
                "list and sha256 were not found",
            ),
            _nextcloud("jnQ2qmp9tst8kyQ", "fare_eps_4.pt"),
        ),
        license="MIT",
        paper=ROBUSTVLM_PAPER,
        project=ROBUSTVLM,
        note=_L14_NOTE,
    ),
    ZooEntry(
        id="robustvlm-tecoa1-vit-b-32-openai",
        method="tecoa",
        arch="ViT-B-32",
        pretrained="openai",
        eps=1,
        norm="linf",
        train_data="ImageNet (assumed)",
        sources=(_nextcloud("LHgi84RskrtYCiX", "vitb32_tecoa_eps_1.pt", _B32_OPENAI_NOTE),),
        license="MIT",
        paper=ROBUSTVLM_PAPER,
        project=ROBUSTVLM,
        note="no eps-2 ViT-B/32 model is listed in the README (only eps 1 and 4)",
    ),
    ZooEntry(
        id="robustvlm-fare1-vit-b-32-openai",
        method="fare",
        arch="ViT-B-32",
        pretrained="openai",
        eps=1,
        norm="linf",
        train_data="ImageNet (assumed)",
        sources=(_nextcloud("cCgQAS8QW9arj9d", "vitb32_fare_eps_1.pt", _B32_OPENAI_NOTE),),
        license="MIT",
        paper=ROBUSTVLM_PAPER,
        project=ROBUSTVLM,
        note="no eps-2 ViT-B/32 model is listed in the README (only eps 1 and 4)",
    ),
    ZooEntry(
        id="robustvlm-tecoa4-vit-b-32-openai",
        method="tecoa",
        arch="ViT-B-32",
        pretrained="openai",
        eps=4,
        norm="linf",
        train_data="ImageNet (assumed)",
        sources=(_nextcloud("RiWGQzBrqYNCaDk", "vitb32_tecoa_eps_4.pt", _B32_OPENAI_NOTE),),
        license="MIT",
        paper=ROBUSTVLM_PAPER,
        project=ROBUSTVLM,
    ),
    ZooEntry(
        id="robustvlm-fare4-vit-b-32-openai",
        method="fare",
        arch="ViT-B-32",
        pretrained="openai",
        eps=4,
        norm="linf",
        train_data="ImageNet (assumed)",
        sources=(_nextcloud("3nMxBKEwbWnDymT", "vitb32_fare_eps_4.pt", _B32_OPENAI_NOTE),),
        license="MIT",
        paper=ROBUSTVLM_PAPER,
        project=ROBUSTVLM,
    ),
    ZooEntry(
        id="robustvlm-tecoa4-vit-b-32-laion2b",
        method="tecoa",
        arch="ViT-B-32",
        pretrained="laion2b_s34b_b79k",
        eps=4,
        norm="linf",
        train_data="ImageNet",
        sources=(
            _hf("chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", _HF_SAFETENSORS, note=_LAION_HUB_NOTE),
            _hf("chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", _HF_BIN, note=_LAION_HUB_NOTE),
        ),
        license="MIT",
        paper=PERCEPTUAL_PAPER,
        project=ROBUSTVLM,
        note="model card: fine-tuned from laion/CLIP-ViT-B-32-laion2B-s34B-b79K with TeCoA on ImageNet at 4/255; "
        "no sha256 was found for either file",
    ),
    ZooEntry(
        id="robustvlm-fare4-vit-b-32-laion2b",
        method="fare",
        arch="ViT-B-32",
        pretrained="laion2b_s34b_b79k",
        eps=4,
        norm="linf",
        train_data="ImageNet",
        sources=(
            _hf("chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", _HF_SAFETENSORS, note=_LAION_HUB_NOTE),
            _hf("chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", _HF_BIN, note=_LAION_HUB_NOTE),
        ),
        license="MIT",
        paper=PERCEPTUAL_PAPER,
        project=ROBUSTVLM,
        note="FARE at 4/255 from laion/CLIP-ViT-B-32-laion2B-s34B-b79K (RobustVLM README); both file names are "
        "used by public code that loads this repo; no sha256 was found; the license is that of the sibling "
        "model cards and of the RobustVLM repository",
    ),
    ZooEntry(
        id="robustvlm-tecoa4-vit-b-16-laion2b",
        method="tecoa",
        arch="ViT-B-16",
        pretrained="laion2b_s34b_b88k",
        eps=4,
        norm="linf",
        train_data="ImageNet",
        sources=(
            _hf(
                "chs20/TeCoA4-ViT-B-16-laion2B-s34B-b88K",
                _HF_SAFETENSORS,
                note="the hub's commit history lists open_clip_model.safetensors (commit b15c868, 'Add model')",
            ),
            _hf("chs20/TeCoA4-ViT-B-16-laion2B-s34B-b88K", _HF_BIN, note="fallback; not confirmed in this repo"),
        ),
        license="MIT",
        paper=PERCEPTUAL_PAPER,
        project=ROBUSTVLM,
        note="model card: fine-tuned from laion/CLIP-ViT-B-16-laion2B-s34B-b88K with TeCoA on ImageNet at 4/255",
    ),
    ZooEntry(
        id="robustvlm-fare4-vit-b-16-laion2b",
        method="fare",
        arch="ViT-B-16",
        pretrained="laion2b_s34b_b88k",
        eps=4,
        norm="linf",
        train_data="ImageNet",
        sources=(
            _hf(
                "chs20/FARE4-ViT-B-16-laion2B-s34B-b88K",
                _HF_BIN,
                sha256="0d432910d3e70ea6fe043662a9fa99472ae87dffef8b1ddd6f5383f96d6dff27",
                note="sha256 from the hub's file page (commit 98515b0, 'Add model'; 599 MB); listed first because "
                "its hash is published",
            ),
            _hf("chs20/FARE4-ViT-B-16-laion2B-s34B-b88K", _HF_SAFETENSORS, note="hub page carries the Safetensors tag"),
        ),
        license="MIT",
        paper=PERCEPTUAL_PAPER,
        project=ROBUSTVLM,
        note="FARE at 4/255 from laion/CLIP-ViT-B-16-laion2B-s34B-b88K (RobustVLM README)",
    ),
    ZooEntry(
        id="tga-zsr-vit-b-32",
        method="tga_zsr",
        arch="ViT-B-32",
        pretrained="openai",
        eps=1,
        norm="linf",
        train_data="TinyImageNet",
        sources=(
            Source(
                "https://drive.google.com/drive/folders/1T7APhNq3tRW81vC1Lx8JSbHxWuP7euSx",
                None,
                "tecoa_official",
                manual=True,
                note="a Google Drive folder linked from the TGA-ZSR README, not a file: download the checkpoint "
                "by hand; its file name and sha256 are not known here; layout from TGA-ZSR.py (save_checkpoint "
                "with vision_encoder_state_dict)",
            ),
        ),
        license=None,
        paper="Yu, Zhang, Xu: Text-Guided Attention is All You Need for Zero-Shot Robustness in Vision-Language "
        "Models, NeurIPS 2024 (arXiv:2410.21802)",
        project="https://github.com/zhyblue424/TGA-ZSR",
        note="tga_zsr is not a method of this benchmark's registry; arch, eps and training data are the README's "
        "defaults (--arch vit_b32, --train_eps 1, --dataset tinyImageNet), not stated for the released file; no "
        "license file was found in the repository",
    ),
]


def _world_entry() -> ZooEntry:
    """The world CLIP shipped with the package (a base model, not a fine-tuning: ``--pretrained world``)."""
    from ..world import PRETRAIN_COMMAND, WORLD_WEIGHTS

    return ZooEntry(
        id="zsbench-world",
        method="clip",
        arch="zsbench-world",
        pretrained="world",
        eps=0,
        norm="linf",
        train_data="the procedural image-caption world of robustbench_zs.world (generated, never a held-out pair)",
        sources=(
            Source(
                f"{PACKAGE_PREFIX}{WORLD_WEIGHTS.file}",
                Path(WORLD_WEIGHTS.file).name,
                "open_clip",
                sha256=WORLD_WEIGHTS.sha256,
                note="shipped inside the package; use it as --arch zsbench-world --pretrained world (no download)",
            ),
        ),
        license="the license of robustbench_zs",
        paper="robustbench_zs: a tiny CLIP pre-trained contrastively from scratch on a procedural world",
        project="robustbench_zs/world (README: the proxy world)",
        note=f"rebuilt bit for bit, on one thread, by: {PRETRAIN_COMMAND}",
    )


_ENTRIES.append(_world_entry())

#: The zoo, by id. Code reads it through :func:`get_entry` / :func:`entries` so that tests can replace it.
ZOO: Registry[ZooEntry] = Registry("zoo checkpoint")
for _entry in _ENTRIES:
    ZOO.add(_entry.id, _entry)
del _entry


def get_entry(zoo_id: str) -> ZooEntry:
    """The entry ``zoo_id``; an unknown id is a one-line error listing the known ones."""
    return ZOO.get(zoo_id)


def entries() -> list[ZooEntry]:
    """All entries, in table order."""
    return [e for _, e in ZOO.items()]
