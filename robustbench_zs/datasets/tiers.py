"""The two tiers of the protocol: ``fast`` (RobustVLM's protocol on 1,000 shipped images per dataset) and ``gold``
(standard AutoAttack on the full test splits).

- ``fast``: the attack ``apgd-ce+t`` (APGD-CE, then APGD-T on the points still robust: AutoAttack's
  ``version='custom'`` with ``attacks_to_run=['apgd-ce', 'apgd-t']``, as chs20/RobustVLM ran its zero-shot evaluation),
  on the images of one index file per dataset, shipped in ``fast_subsets/`` and identical for every user. Each file
  names its dataset, split, the split's size, the rule that drew it, the indices (into our loader's split order) and
  their sha256; ``fast_subsets/manifest.json`` holds every file's sha256, checked at each load, and a dataset whose
  split on disk has another size than the one the file was drawn from is refused.
- ``gold``: standard AutoAttack (``autoattack``) on every image of the test split.

The rules (:data:`FAST_DATASETS`), fixed once: RobustVLM's own selection where its code fixes one, else ours.

- ``first-n`` (CIFAR-10, CIFAR-100): the first 1,000 test images, as RobustVLM's ``CLIP_eval/clip_robustbench.py``
  takes them (RobustBench's ``load_cifar10/100`` keeps the first ``n_examples`` of the test set; its default
  ``--n_samples_cifar`` is 1000).
- ``robustbench-imagenet-list`` (ImageNet): the first 1,000 of RobustBench's list of 5,000 validation images, in its
  order (``fast_subsets/robustbench_imagenet_first1000.txt``): what ``clip_robustbench.py --n_samples_imagenet 1000``
  attacks (its default of 5,000 takes the whole list). Our ImageNet val is ordered by file name, so
  ``ILSVRC2012_val_<k>.JPEG`` is index k - 1; the file also lists each image's name and wnid, checked at load.
- ``sha256-rank`` (the other 13): RobustVLM's CLIP_benchmark evaluation draws its 1,000 images by shuffling the
  webdataset stream of its Hugging Face shards (``dataset.shuffle(10000, initial=10000, rng=random.Random(seed))``
  in ``CLIP_benchmark/clip_benchmark/cli.py``), which depends on shards we do not read; so ours: index i of the split
  (our loader's order) gets the key ``sha256("robustbench_zs fast tier|<dataset id>|<split>|<i>")`` (hex digest);
  the 1,000 indices with the smallest keys, sorted ascending. It uses no random number generator, so neither the
  machine, the Python version nor numpy's can change it.

``python -m robustbench_zs.datasets.tiers`` writes the files from these rules (``--check`` compares instead); the tests
regenerate them and compare the bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import ZSBenchError
from ..resources import REINSTALL_HINT, describe, read_bytes
from .subset import Subset, indices_sha256

TIERS = ("fast", "gold")
#: the attack of each tier (registry names; ``robustbench_zs.attacks``)
TIER_ATTACK = {"fast": "apgd-ce+t", "gold": "autoattack"}
#: what each tier runs, in words (the leaderboard's protocol line and the README)
TIER_LINES = {
    "fast": "fast tier: the 1,000 shipped images per dataset, attacked by APGD-CE + APGD-T (RobustVLM's protocol)",
    "gold": "gold tier: the full test split, attacked by standard AutoAttack",
}

#: images per dataset in the fast tier (the whole split where it is smaller)
FAST_N = 1000
#: ``Subset.selection`` of a fast-tier subset
FAST_SELECTION = "fast_tier"
#: dataset-block keys that describe a shipped subset file (recorded; the indices' hash is the images' identity)
SUBSET_FILE_KEYS = ("subset_file", "subset_file_sha256", "subset_rule")

PACKAGE = __package__  # robustbench_zs.datasets
FOLDER = "fast_subsets"
MANIFEST = "manifest.json"
IMAGENET_SOURCE = "robustbench_imagenet_first1000.txt"
HASH_PREFIX = "robustbench_zs fast tier"

FIRST_N = "first-n"
SHA256_RANK = "sha256-rank"
ROBUSTBENCH_IMAGENET = "robustbench-imagenet-list"

_CLIP_BENCHMARK = (
    "RobustVLM (CLIP_benchmark/clip_benchmark/cli.py) evaluates 1,000 images of a webdataset stream shuffled with "
    "dataset.shuffle(10000, initial=10000, rng=random.Random(seed)) over its Hugging Face shards: not reproducible "
    "from this dataset's files, so ours"
)
_NOT_THEIRS = (
    "not among RobustVLM's zero-shot datasets (CLIP_benchmark/benchmark/datasets.txt): ours, drawn as for the "
    "datasets whose RobustVLM selection cannot be reproduced"
)
#: dataset id -> (split, images in the split, rule, how RobustVLM chose its images): the paper's 16 datasets
FAST_DATASETS: dict[str, tuple[str, int, str, str]] = {
    "cifar10": (
        "test",
        10_000,
        FIRST_N,
        "RobustVLM (CLIP_eval/clip_robustbench.py, RobustBench's load_cifar10): "
        "the first --n_samples_cifar (default 1000) test images",
    ),
    "cifar100": (
        "test",
        10_000,
        FIRST_N,
        "RobustVLM (CLIP_eval/clip_robustbench.py, RobustBench's load_cifar100): "
        "the first --n_samples_cifar (default 1000) test images",
    ),
    "stl10": ("test", 8_000, SHA256_RANK, _CLIP_BENCHMARK),
    "sun397": ("all", 108_754, SHA256_RANK, _NOT_THEIRS),
    "food101": ("test", 25_250, SHA256_RANK, _NOT_THEIRS),
    "oxfordpets": ("test", 3_669, SHA256_RANK, _CLIP_BENCHMARK),
    "flowers102": ("test", 6_149, SHA256_RANK, _CLIP_BENCHMARK),
    "dtd": ("test", 1_880, SHA256_RANK, _CLIP_BENCHMARK),
    "eurosat": ("all", 27_000, SHA256_RANK, _CLIP_BENCHMARK),
    "fgvc_aircraft": ("test", 3_333, SHA256_RANK, _CLIP_BENCHMARK),
    "tinyimagenet": ("val", 10_000, SHA256_RANK, _NOT_THEIRS),
    "imagenet": (
        "val",
        50_000,
        ROBUSTBENCH_IMAGENET,
        "RobustVLM (CLIP_eval/clip_robustbench.py, RobustBench's "
        "load_imagenet): the first --n_samples_imagenet (default 5000) of RobustBench's list",
    ),
    "caltech101": ("all", 8_677, SHA256_RANK, _CLIP_BENCHMARK),
    "caltech256": ("all", 30_607, SHA256_RANK, _NOT_THEIRS),
    "stanfordcars": ("test", 8_041, SHA256_RANK, _CLIP_BENCHMARK),
    "pcam": ("test", 32_768, SHA256_RANK, _CLIP_BENCHMARK),
}

RULES = {
    FIRST_N: "the first n images of the split, in our loader's order (the official test-set order)",
    SHA256_RANK: "the n indices i of the split (our loader's order) with the smallest sha256 hex digest of "
    f"'{HASH_PREFIX}|<dataset>|<split>|<i>' (UTF-8), sorted ascending",
    ROBUSTBENCH_IMAGENET: f"the images listed in {FOLDER}/{IMAGENET_SOURCE} (the first 1,000 of RobustBench's "
    "imagenet_test_image_ids.txt); ILSVRC2012_val_<k>.JPEG is index k - 1 of our val split (ordered by file name), "
    "sorted ascending",
}


# ------------------------------------------------------------------------------------------------------ the rules
def sha256_rank(ds_id: str, split: str, n_total: int, n: int) -> np.ndarray:
    """The ``sha256-rank`` draw: the ``n`` indices of ``range(n_total)`` with the smallest keys, sorted."""
    keys = [hashlib.sha256(f"{HASH_PREFIX}|{ds_id}|{split}|{i}".encode()).hexdigest() for i in range(n_total)]
    chosen = sorted(range(n_total), key=keys.__getitem__)[:n]
    return np.asarray(sorted(chosen), dtype=np.int64)


def robustbench_imagenet_files(n: int) -> list[str]:
    """The first ``n`` entries (``<wnid>/ILSVRC2012_val_<8 digits>.JPEG``) of the shipped RobustBench list."""
    text = _data_bytes(IMAGENET_SOURCE).decode("utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return lines[:n]


def _imagenet_index(entry: str) -> int:
    wnid, _, name = entry.partition("/")
    digits = name.removeprefix("ILSVRC2012_val_").removesuffix(".JPEG")
    if not (wnid.startswith("n") and len(digits) == 8 and digits.isdigit()):
        raise ZSBenchError(
            f"{describe(PACKAGE, FOLDER + '/' + IMAGENET_SOURCE)}: bad entry {entry!r}; {REINSTALL_HINT}"
        )
    return int(digits) - 1


def build_document(ds_id: str) -> dict:
    """The index file of ``ds_id`` as its rule draws it (a dict in the file's key order)."""
    split, n_total, rule, robustvlm = FAST_DATASETS[ds_id]
    n = min(FAST_N, n_total)
    files = None
    if rule == FIRST_N:
        idx = np.arange(n, dtype=np.int64)
    elif rule == SHA256_RANK:
        idx = sha256_rank(ds_id, split, n_total, n)
    else:
        listed = robustbench_imagenet_files(n)
        by_index = {_imagenet_index(e): e for e in listed}
        idx = np.asarray(sorted(by_index), dtype=np.int64)
        files = [by_index[int(i)] for i in idx]
    doc = {
        "tier": "fast",
        "dataset": ds_id,
        "split": split,
        "n_total": n_total,
        "n": len(idx),
        "rule": rule,
        "rule_detail": RULES[rule],
        "robustvlm": robustvlm,
        "indices_sha256": indices_sha256(idx),
        "indices": [int(i) for i in idx],
    }
    if files is not None:
        doc["files"] = files
    return doc


def render_document(doc: Mapping) -> bytes:
    """A document as the file's bytes: one key a line, lists on one line, UTF-8, a final newline."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in doc.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


def build_files() -> dict[str, bytes]:
    """Every file of ``fast_subsets/`` the rules give (the ImageNet source list aside): name -> bytes."""
    out = {f"{ds_id}.json": render_document(build_document(ds_id)) for ds_id in FAST_DATASETS}
    manifest = {
        "tier": "fast",
        "about": "sha256 of each fast-tier index file (checked at every load) and of its indices; "
        "regenerate with python -m robustbench_zs.datasets.tiers",
        "files": {
            ds_id: {
                "file": name,
                "sha256": hashlib.sha256(out[name]).hexdigest(),
                "indices_sha256": json.loads(out[name])["indices_sha256"],
                "n": json.loads(out[name])["n"],
                "n_total": json.loads(out[name])["n_total"],
            }
            for ds_id, name in ((d, f"{d}.json") for d in FAST_DATASETS)
        },
    }
    out[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return out


# ---------------------------------------------------------------------------------------------------- the files
def _data_bytes(name: str) -> bytes:
    """The bytes of ``fast_subsets/<name>`` (not decoded: line endings included, as hashed)."""
    return read_bytes(PACKAGE, f"{FOLDER}/{name}")


@cache
def manifest() -> dict:
    """The parsed ``fast_subsets/manifest.json`` (cached; do not modify)."""
    try:
        return json.loads(_data_bytes(MANIFEST))
    except ValueError as e:
        where = describe(PACKAGE, f"{FOLDER}/{MANIFEST}")
        raise ZSBenchError(f"package data file {where} is not valid JSON ({e}); {REINSTALL_HINT}") from None


def fast_datasets() -> list[str]:
    """The dataset ids with a shipped fast-tier subset."""
    return list(manifest()["files"])


def file_name(ds_id: str) -> str:
    """How records name the index file of ``ds_id``: ``robustbench_zs/datasets/fast_subsets/<id>.json``."""
    return describe(PACKAGE, f"{FOLDER}/{manifest()['files'][ds_id]['file']}")


def no_fast_subset(ds_id: str) -> ZSBenchError:
    return ZSBenchError(
        f"--tier fast: no shipped fast-tier subset for {ds_id}; the fast tier covers {', '.join(fast_datasets())} "
        "(run other datasets without --tier, with --n N for a seeded subset)"
    )


@cache
def read_document(ds_id: str) -> tuple[dict, str]:
    """The index file of ``ds_id`` and its sha256, after checking the hash against the manifest (cached)."""
    entry = manifest()["files"].get(ds_id)
    if entry is None:
        raise no_fast_subset(ds_id)
    raw = _data_bytes(entry["file"])
    sha = hashlib.sha256(raw).hexdigest()
    where = file_name(ds_id)
    if sha != entry["sha256"]:
        raise ZSBenchError(
            f"{where} has sha256 {sha[:16]}..., the manifest says {entry['sha256'][:16]}...: the shipped index file "
            f"was changed; {REINSTALL_HINT} (or regenerate: python -m robustbench_zs.datasets.tiers)"
        )
    doc = json.loads(raw)
    idx = np.asarray(doc["indices"], dtype=np.int64)
    ok = (
        doc.get("dataset") == ds_id
        and len(idx) == doc["n"] == entry["n"]
        and doc["n_total"] == entry["n_total"]
        and bool(np.all(np.diff(idx) > 0))
        and (len(idx) == 0 or (idx[0] >= 0 and idx[-1] < doc["n_total"]))
        and indices_sha256(idx) == doc["indices_sha256"] == entry["indices_sha256"]
    )
    if not ok:
        raise ZSBenchError(f"{where} does not hold sorted indices matching its hashes; {REINSTALL_HINT}")
    return doc, sha


def _check_files(doc: Mapping, data, where: str) -> None:
    """Where the file lists each image's ``<wnid>/<file name>`` (ImageNet), the split's image at each index must be it."""
    listed = doc.get("files")
    samples = getattr(data, "samples", None)
    if listed is None or samples is None:
        return
    wnids = getattr(data, "wnids", None)
    for i, entry in zip(doc["indices"], listed, strict=True):
        path, label = samples[i]
        wnid, _, name = entry.partition("/")
        if Path(path).name != name or (wnids is not None and wnids[label] != wnid):
            got = f"{wnids[label]}/{Path(path).name}" if wnids is not None else Path(path).name
            raise ZSBenchError(
                f"{doc['dataset']}: image {i} of the split is {got}, where the fast-tier subset ({where}) lists {entry}; "
                "the split is not laid out as the subset was drawn from"
            )


def fast_subset(ds_id: str, data, split: str) -> Subset:
    """The fast-tier images of ``ds_id`` in the loaded split ``data`` (of ``split``), checked: the file's hash against
    the manifest, the split's size against the one the file was drawn from, and (ImageNet) each image's name."""
    doc, sha = read_document(ds_id)
    where = file_name(ds_id)
    if split != doc["split"]:
        raise ZSBenchError(f"{ds_id}: the fast-tier subset ({where}) indexes the {doc['split']} split, not {split}")
    if len(data) != doc["n_total"]:
        raise ZSBenchError(
            f"{ds_id}/{split}: the fast-tier subset was drawn from {doc['n_total']:,} images, this split has "
            f"{len(data):,} ({where}); the fast tier needs the complete split (zsbench datasets check)"
        )
    _check_files(doc, data, where)
    idx = np.asarray(doc["indices"], dtype=np.int64)
    n_total, sha_idx = doc["n_total"], doc["indices_sha256"]
    return Subset(idx, n_total, None, sha_idx, FAST_SELECTION, file=where, file_sha256=sha, rule=doc["rule"])


# -------------------------------------------------------------------------------------------- tiers of records
def check_choices(tier: str, attacks: list[str], *, n: int | str | None, paper_subsample: bool) -> None:
    """Refuse, in one line, a choice that contradicts ``tier``: other images (``--n``, ``--paper-subsample``) or
    another attack than the tier's (``attacks``: the attack names given; none at all is another attack too)."""
    if tier not in TIERS:
        raise ZSBenchError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    images = "the shipped 1,000-image subsets" if tier == "fast" else "the full test splits"
    if n is not None:
        raise ZSBenchError(f"--tier {tier} evaluates {images}; --n chooses other images: drop one of them")
    if paper_subsample:
        raise ZSBenchError(
            f"--tier {tier} evaluates {images}; --paper-subsample chooses other images: drop one of them"
        )
    attack = TIER_ATTACK[tier]
    if sorted(set(attacks)) != [attack]:
        given = ",".join(attacks) or "none"
        raise ZSBenchError(f"--tier {tier} runs --attack {attack}; --attack {given} contradicts it: drop one of them")


def check_run(tier: str, threats, *, n: int | None, paper_subsample: bool, datasets) -> None:
    """Refuse, in one line, what contradicts ``tier`` in a run: another way of choosing the images, another attack
    than the tier's (or none), an attack precision other than fp32, a dataset without a fast-tier subset."""
    check_choices(tier, [t.name for t in threats], n=n, paper_subsample=paper_subsample)
    precisions = sorted({t.precision for t in threats} - {"fp32"})
    if precisions:
        raise ZSBenchError(
            f"--tier {tier} attacks in fp32; attack precision {precisions[0]} (--attack-precision, or the paper "
            "profile's) is not the tier's protocol: add --attack-precision fp32 or drop --tier"
        )
    if tier == "fast":
        for ds_id in datasets:
            if ds_id not in manifest()["files"]:
                raise no_fast_subset(ds_id)


def tier_of(dataset: Mapping, attack: Mapping) -> str | None:
    """The tier a record's number belongs to, from what it measured (never from how it was asked for): ``fast`` for
    the shipped fast-tier images of its dataset (clean, or under ``apgd-ce+t`` in fp32), ``gold`` for standard
    AutoAttack in fp32 on every image of the split, else None. The same number is the same record whatever the run
    that wrote it, so the tier is not part of a record's key."""
    name = attack.get("name")
    fp32 = attack.get("precision", "fp32") == "fp32"
    entry = manifest()["files"].get(dataset.get("id"))
    if entry is not None and dataset.get("indices_sha256") == entry["indices_sha256"]:
        if dataset.get("n_total") == entry["n_total"] and (name == "clean" or (name == TIER_ATTACK["fast"] and fp32)):
            return "fast"
        return None
    full = dataset.get("n") == dataset.get("n_total")
    if name == TIER_ATTACK["gold"] and fp32 and attack.get("version", "standard") == "standard" and full:
        return "gold"
    return None


# ---------------------------------------------------------------------------------------------------- generator
def main(argv: list[str] | None = None) -> int:
    """``python -m robustbench_zs.datasets.tiers [--check] [--out DIR]``: write (or compare) the fast-tier files."""
    p = argparse.ArgumentParser(prog="python -m robustbench_zs.datasets.tiers", description=main.__doc__)
    p.add_argument("--check", action="store_true", help="compare the files with the rules' output; write nothing")
    p.add_argument("--out", help="folder to write to (default: the package's fast_subsets/)")
    args = p.parse_args(argv)
    folder = Path(args.out) if args.out else Path(__file__).resolve().parent / FOLDER
    files = build_files()
    if args.check:
        differ = [
            name for name, raw in files.items() if not (folder / name).is_file() or (folder / name).read_bytes() != raw
        ]
        for name in differ:
            print(f"differs from its rule: {folder / name}")
        print(f"{len(files) - len(differ)} of {len(files)} files equal their rules' output")
        return 1 if differ else 0
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    print(f"wrote {len(files)} files to {folder}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
