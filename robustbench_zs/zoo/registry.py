"""The zoo's table: published robust CLIP image encoders, where to get them and what is known about each file.

The entries are data, in ``data/zoo.json`` (read by :func:`load_entries` into :class:`ZooEntry` objects, checked by
their dataclasses); only the world CLIP shipped with the package is built here, from :mod:`robustbench_zs.world`.
Every fact in the table was read from the release itself (the project's README, the Hugging Face model card or file page)
and the ``note`` of an entry or source says where, and what could not be confirmed. A ``sha256`` is set only where
the host publishes it (Hugging Face shows the sha256 of every LFS file); elsewhere it is ``None`` and ``zsbench models
download`` records the sha256 it computed, marked as not verified against a published value.

Training radii are L-inf, in units of 1/255, as the papers state them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import ZSBenchError
from ..registry import Registry
from ..resources import REINSTALL_HINT, describe, read_json
from ..world import PRETRAIN_COMMAND, WORLD_WEIGHTS

#: What a file holds; :func:`robustbench_zs.weights.load_visual_state` reads all three.
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
        method: the method id of this benchmark's registry (``tecoa``, ``fare``, ``tga_zsr``, ...), or the paper's
            own name where the method is not registered here (``zsbench models list`` then says so).
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


#: The package data file of the table (every entry but the world CLIP, which :func:`_world_entry` builds).
ZOO_DATA = ("robustbench_zs.zoo", "data/zoo.json")

_SOURCE_FIELDS = frozenset(f.name for f in fields(Source))
_ENTRY_FIELDS = frozenset(f.name for f in fields(ZooEntry))


def _checked(d: object, allowed: frozenset[str], what: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return d


def entry_from_dict(d: dict) -> ZooEntry:
    """A :class:`ZooEntry` from its JSON form: the dataclass fields, ``sources`` a list of :class:`Source` fields
    (fields left out take their defaults). Raises ValueError or TypeError for a malformed entry."""
    d = _checked(d, _ENTRY_FIELDS, "a zoo entry")
    sources = d.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ValueError("a zoo entry needs a non-empty list of sources")
    return ZooEntry(**{**d, "sources": tuple(Source(**_checked(s, _SOURCE_FIELDS, "a zoo source")) for s in sources)})


def load_entries(package: str = ZOO_DATA[0], name: str = ZOO_DATA[1]) -> list[ZooEntry]:
    """The entries of the zoo's data file, in file order; a malformed entry is a one-line ZSBenchError."""
    doc = read_json(package, name)
    raw = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise ZSBenchError(f"zoo data file {describe(package, name)} has no list of 'entries'; {REINSTALL_HINT}")
    out = []
    for i, d in enumerate(raw):
        try:
            out.append(entry_from_dict(d))
        except (TypeError, ValueError) as e:
            label = d.get("id", f"#{i}") if isinstance(d, dict) else f"#{i}"
            raise ZSBenchError(f"zoo data file {describe(package, name)}, entry {label}: {e}") from None
    return out


def _world_entry() -> ZooEntry:
    """The world CLIP shipped with the package (a base model, not a fine-tuning: ``--pretrained world``)."""
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


_ENTRIES = [*load_entries(), _world_entry()]

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
