"""ImageNet-1k (ILSVRC2012) read from the official archives, or from the class folders torchvision prepares.

The validation split is read from either of the two layouts ``<data-root>/imagenet/val`` can have:

* class folders ``val/<wnid>/*.JPEG`` (what ``torchvision.datasets.ImageNet`` or the usual "valprep" script leaves);
* the flat folder ``val/ILSVRC2012_val_00000001.JPEG ...`` as extracted from ``ILSVRC2012_img_val.tar``, labelled by
  the devkit: ``ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}`` extracted next to
  ``val/``, or the unextracted ``ILSVRC2012_devkit_t12.tar.gz`` (read in place with :mod:`tarfile`).

Line ``k`` of the ground-truth file is the ILSVRC2012_ID of ``ILSVRC2012_val_<k:08d>.JPEG``; ``meta.mat``'s leaf synsets
(``num_children == 0``, IDs 1..1000) map that ID to a wnid, and the label is the wnid's position in the sorted list of
the 1000 wnids (the torchvision/timm class index). Validation samples are ordered by file name in both layouts, so a
subset selects the same images whichever layout is on disk.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from ..errors import ZSBenchError
from .files import FileImageDataset, check_class_count, image_files, load_mat, missing, no_split, read_lines
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec, load_metadata
from .tinyimagenet import imagenet_curated

FOLDER = "imagenet"
NUM_CLASSES = 1000
DEVKIT = "ILSVRC2012_devkit_t12"
DEVKIT_TAR = f"{DEVKIT}.tar.gz"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "num_children")


def _wnid_table() -> dict[str, str]:
    return load_metadata("imagenet_wnid_to_name")["names"]


def _parse_meta(mat: dict, where: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets of a devkit ``meta.mat`` (loaded with ``load_mat``)."""
    if "synsets" not in mat:
        raise ZSBenchError(f"corrupt devkit file {where}: no 'synsets' variable; re-download the devkit")
    synsets = np.atleast_1d(mat["synsets"]).ravel()
    ids: dict[int, str] = {}
    for i, s in enumerate(synsets):
        try:
            sid, wnid, children = (getattr(s, f) for f in SYNSET_FIELDS)
            sid, children = int(sid), int(children)
        except (AttributeError, TypeError, ValueError):
            raise ZSBenchError(
                f"corrupt devkit file {where}: synset {i + 1} lacks numeric {', '.join(SYNSET_FIELDS)} fields"
            ) from None
        if children == 0:
            ids[sid] = str(wnid)
    if sorted(ids) != list(range(1, NUM_CLASSES + 1)):
        raise ZSBenchError(
            f"corrupt devkit file {where}: expected leaf synsets with ILSVRC2012_ID 1..{NUM_CLASSES}, "
            f"found {len(ids)}; re-download the devkit"
        )
    table = _wnid_table()
    unknown = sorted(w for w in ids.values() if w not in table)
    if unknown or len(set(ids.values())) != NUM_CLASSES:
        bad = ", ".join(unknown[:5]) or "duplicate wnids"
        raise ZSBenchError(f"corrupt devkit file {where}: leaf wnids not among the 1000 ImageNet classes: {bad}")
    return ids


def _parse_ground_truth(lines: list[str], where: str) -> list[int]:
    """The ILSVRC2012_ID of each validation image (entry k-1 for image number k)."""
    out = []
    for lineno, line in enumerate(lines, 1):
        try:
            value = int(line)
        except ValueError:
            value = -1
        if not 1 <= value <= NUM_CLASSES:
            raise ZSBenchError(f"{where}:{lineno}: expected an ILSVRC2012_ID in 1..{NUM_CLASSES}, got {line[:40]!r}")
        out.append(value)
    return out


def _read_devkit(spec: DatasetSpec, base: Path) -> tuple[dict[int, str], list[int], str]:
    """(ID -> wnid, ground-truth IDs, description of the source) from the extracted devkit or its tarball."""
    folder, tar = base / DEVKIT, base / DEVKIT_TAR
    if folder.is_dir():
        absent = [f"{DEVKIT}/{n}" for n in (META, GROUND_TRUTH) if not (folder / n).is_file()]
        if not absent:
            ids = _parse_meta(load_mat(folder / META), str(folder / META))
            gt_file = folder / GROUND_TRUTH
            return ids, _parse_ground_truth(read_lines(gt_file), str(gt_file)), str(folder)
        if not tar.is_file():
            raise missing(spec, base, f"flat val/ images but the extracted devkit lacks {', '.join(absent)}")
    if not tar.is_file():
        raise missing(spec, base, f"flat val/ images but no devkit: put {DEVKIT_TAR} in {base} (or extract it there)")
    try:
        with tarfile.open(tar, "r:gz") as tf:
            blobs = {}
            for name in (META, GROUND_TRUTH):
                member = f"{DEVKIT}/{name}"
                try:
                    f = tf.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise ZSBenchError(f"corrupt devkit archive {tar}: no member {member}; re-download it")
                blobs[name] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ZSBenchError(f"corrupt devkit archive {tar}: {e}; re-download it") from None

    meta_where = f"{tar}:{DEVKIT}/{META}"
    try:
        mat = loadmat(io.BytesIO(blobs[META]), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, ... on broken files
        raise ZSBenchError(f"corrupt MATLAB file {meta_where}: {e}; re-download the devkit") from None
    gt_where = f"{tar}:{DEVKIT}/{GROUND_TRUTH}"
    try:
        text = blobs[GROUND_TRUTH].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ZSBenchError(f"corrupt metadata file {gt_where}: not UTF-8 text ({e.reason}); re-download it") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return _parse_meta(mat, meta_where), _parse_ground_truth(lines, gt_where), str(tar)


def _class_folders(spec: DatasetSpec, base: Path, split_dir: Path) -> list[str]:
    """The wnid folders of ``split_dir`` (sorted), checked against the 1000 ImageNet classes."""
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    table = _wnid_table()
    unknown = [w for w in folders if w not in table]
    if unknown:
        raise ZSBenchError(
            f"{split_dir}: folders that are not ImageNet-1k wnids: {', '.join(unknown[:5])}; expected {spec.layout}"
        )
    if len(folders) != NUM_CLASSES:
        absent = sorted(set(table) - set(folders))
        check_class_count(spec, len(folders), base, f"{split_dir.name}/ lacks e.g. {', '.join(absent[:3])}")
    return folders


def _val_samples(spec: DatasetSpec, base: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    val = base / "val"
    index = {w: i for i, w in enumerate(wnids)}
    folders = [p for p in val.iterdir() if p.is_dir() and not p.name.startswith(".")]
    flat = image_files(val)
    if folders and flat:
        raise missing(
            spec,
            base,
            f"val/ mixes {len(folders)} class folders with {len(flat)} flat images; keep one layout "
            "(the flat ILSVRC2012_img_val.tar extraction plus the devkit, or val/<wnid>/ folders)",
        )
    if folders:
        samples = []
        for w in _class_folders(spec, base, val):
            samples.extend((p, index[w]) for p in image_files(val / w))
        samples.sort(key=lambda s: (s[0].name, s[1]))
    elif flat:
        ids, gt, source = _read_devkit(spec, base)
        label_of_id = {sid: index[w] for sid, w in ids.items()}
        samples = [(val / f"ILSVRC2012_val_{k:08d}.JPEG", label_of_id[sid]) for k, sid in enumerate(gt, 1)]
        absent = [p for p, _ in samples if not p.is_file()]
        if absent:
            raise missing(
                spec,
                base,
                f"{len(absent)} of the {len(samples)} images labelled by {source} are missing from val/, e.g. "
                f"{absent[0].name} (extract all of ILSVRC2012_img_val.tar into val/)",
            )
    else:
        raise missing(spec, base, "val/ holds no images (extract ILSVRC2012_img_val.tar into it)")
    if not samples:
        raise missing(spec, base, "no images in the val split")
    return samples


def load_imagenet(data_root: Path, split: str) -> FileImageDataset:
    spec = DATASETS.get("imagenet")
    if split not in spec.splits:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    if not base.is_dir():
        raise missing(spec, base, f"no folder {FOLDER}")
    split_dir = base / split
    if not split_dir.is_dir():
        raise missing(spec, base, f"no {split}/ folder")
    wnids = sorted(_wnid_table())
    if split == "val":
        samples = _val_samples(spec, base, wnids)
    else:
        samples = []
        for i, w in enumerate(_class_folders(spec, base, split_dir)):
            samples.extend((p, i) for p in image_files(split_dir / w))
        if not samples:
            raise missing(spec, base, "no images in train/<wnid>/")
    table = _wnid_table()
    data = FileImageDataset(samples, [table[w] for w in wnids], root=base)
    data.wnids = wnids
    return data


DATASETS.add(
    "imagenet",
    DatasetSpec(
        id="imagenet",
        name="ImageNet",
        num_classes=NUM_CLASSES,
        splits=("val", "train"),
        eval_split="val",
        templates=(GENERIC_TEMPLATE,),
        folder=FOLDER,
        classnames=None,  # the official wnid -> short-name table, in sorted wnid order
        layout=(
            "<data-root>/imagenet/{val/ILSVRC2012_val_<8 digits>.JPEG (ILSVRC2012_img_val.tar extracted) with "
            f"{DEVKIT_TAR} or its extracted {DEVKIT}/data/{{meta.mat, ILSVRC2012_validation_ground_truth.txt}}, "
            "or val/<wnid>/*.JPEG (torchvision's ImageNet layout); train/<wnid>/*.JPEG}"
        ),
        source="https://image-net.org/download-images.php (ILSVRC2012 validation images and development kit; account)",
        loader=load_imagenet,
        ensemble_templates="imagenet1k",
        ensemble_names=lambda data: imagenet_curated(list(data.wnids)),
        manual_steps=(
            "log in at https://image-net.org/download-images.php (free account, terms of access), then download "
            "ILSVRC2012_img_val.tar (6.3 GB) and ILSVRC2012_devkit_t12.tar.gz (2.5 MB) from the ILSVRC2012 page; "
            "mkdir -p <data-root>/imagenet/val && tar -xf ILSVRC2012_img_val.tar -C <data-root>/imagenet/val && "
            "mv ILSVRC2012_devkit_t12.tar.gz <data-root>/imagenet/ (kept packed: the loader reads it in place); "
            "optional train split: mkdir -p <data-root>/imagenet/train && tar -xf ILSVRC2012_img_train.tar -C "
            "<data-root>/imagenet/train && cd <data-root>/imagenet/train && for f in *.tar; do "
            'mkdir "${f%.tar}" && tar -xf "$f" -C "${f%.tar}" && rm "$f"; done'
        ),
    ),
)
