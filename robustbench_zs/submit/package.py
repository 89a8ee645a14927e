"""``zsbench submit``: one method's records under one protocol, packaged for a maintainer to review and merge.

A submission is a directory ``<id>/`` holding ``submission.json`` (the method card, the checkpoint's sha256 and URL,
the protocol, the profile knobs, the sanity checks that failed and their explanation, and one entry per record with
the sha256 of its file) and ``records/``, the records themselves in the layout of a results folder (so every reader
of records, ``zsbench leaderboard --out <id>`` included, reads a submission as it is). ``submission.json`` follows
the published JSON Schema :data:`SCHEMA_PATH`; :func:`check_submission` checks a directory against it and against
its records' hashes (``zsbench site`` does before using one).

Refused, in one line each: records that miss a dataset or threat of the protocol, that mix tiers or profile knobs,
a checkpoint whose sha256 is not the one the records were computed with, failed sanity checks without an
explanation, and a card that is incomplete or contradicts the records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jsonschema

from ..atomic import replace_folder
from ..datasets.tiers import tier_of
from ..errors import ZSBenchError
from ..profiles import knob_differences
from ..provenance import sha256_file
from ..report.leaderboard import _row_labels, cross_record_checks, records_frame
from ..results import RecordStore
from ..results.record import Record, profile_knobs
from ..version import __version__
from ..weights.base import META_FILE, WEIGHTS_FILE
from ..weights.ours import read_meta
from .protocols import SubmissionProtocol, get_protocol, tier_fits

SCHEMA_PATH = Path(__file__).with_name("submission.schema.json")
SCHEMA_ID = "robustbench_zs/submission/1"
SUBMISSION_FILE = "submission.json"
#: the shortest explanation of failed sanity checks accepted (a word or two explains nothing)
MIN_EXPLANATION = 20

#: what ``zsbench submit --card-template`` prints: every field of a method card
CARD_TEMPLATE = {
    "name": "My method",
    "paper": "arXiv:0000.00000 (or the paper's title or URL; 'unpublished')",
    "venue": "e.g. CVPR 2025, or 'preprint'",
    "code": "https://github.com/OWNER/REPO (or null)",
    "training_data": "e.g. TinyImageNet ('none' for zero-shot weights)",
    "test_time_defense": False,
    "extra_data": "none (or what else the method used: generated images, extra datasets)",
    "authors": "optional",
    "contact": "optional",
}


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _validator(sub: dict | None = None):
    full = schema()
    target = full if sub is None else {**sub, "$defs": full["$defs"]}
    return jsonschema.Draft202012Validator(target, format_checker=None)


def schema_errors(obj: object, part: str | None = None) -> list[str]:
    """Every way ``obj`` breaks the schema (``part``: a definition, e.g. ``card``), as ``where: what`` lines."""
    sub = None if part is None else schema()["$defs"][part]
    errors = sorted(_validator(sub).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    out = []
    for e in errors:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        out.append(f"{where}: {e.message[:160]}")
    return out


def load_card(path: str | os.PathLike) -> dict:
    """A method card (JSON object) from a file, checked against the schema's ``card`` definition (one line if not)."""
    p = Path(path)
    try:
        if not p.is_file():
            raise ZSBenchError(f"--card {p}: no such file; write one with `zsbench submit --card-template > {p}`")
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ZSBenchError(f"--card {p}: not a JSON file ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(card, dict):
        raise ZSBenchError(f"--card {p}: a card is a JSON object (see `zsbench submit --card-template`)")
    unedited = [k for k, v in CARD_TEMPLATE.items() if k in card and card[k] == v and isinstance(v, str)]
    if unedited:
        raise ZSBenchError(
            f"--card {p}: fill in (or, where optional, remove) the card's {', '.join(unedited)}: they still hold the template's text"
        )
    card.setdefault("architecture", "(from the records)")
    errors = schema_errors(card, "card")
    if errors:
        raise ZSBenchError(f"--card {p}: {errors[0]} (see `zsbench submit --card-template`)")
    if card["architecture"] == "(from the records)":
        del card["architecture"]
    return card


@dataclass
class Selection:
    """The records of one submission and what was left out."""

    protocol: SubmissionProtocol
    chosen: dict[tuple[str, str], Record]
    companions: list[Record] = field(default_factory=list)  # a defense's non-adaptive records of the same cells
    left_out: list[Record] = field(default_factory=list)
    superseded: list[Record] = field(default_factory=list)


def _tuned_weights(model: dict) -> str | None:
    """The fine-tuned checkpoint a record evaluates ("sha256:..."): the method's own checkpoint, or the fine-tuned
    end of a weight interpolation (WiSE-FT's theta1); None for pretrained weights."""
    for key in ("checkpoint", "theta1"):
        v = model.get(key)
        if isinstance(v, str) and v.startswith("sha256:"):
            return v
    v = model.get("checkpoint")
    return v if isinstance(v, str) and v else None


def _weights_id(model: dict) -> str:
    tuned = _tuned_weights(model)
    if tuned:
        return tuned.removeprefix("sha256:")
    return model.get("checkpoint_sha256") or model.get("weights_sha256") or ""


def _is_tuned(model: dict) -> bool:
    return _tuned_weights(model) is not None


def _records_of(results: Sequence[Path], method: str) -> list[Record]:
    found: list[Record] = []
    seen_methods: set[str] = set()
    for folder in results:
        if not (Path(folder) / "records").is_dir():
            raise ZSBenchError(f"--results {folder}: no records folder there; run `zsbench run --out {folder}` first")
        for r in RecordStore(Path(folder)).iter_records():
            seen_methods.add(r.method)
            if method in (r.method, r.label):
                found.append(r)
    if not found:
        have = ", ".join(sorted(seen_methods)) or "none"
        raise ZSBenchError(
            f"no records of method {method!r} under {', '.join(map(str, results))} (methods there: {have})"
        )
    return found


def _describe(r: Record) -> str:
    return f"{r.dataset.get('id')} / {r.threat} ({r.path})"


def select(
    records: Iterable[Record], protocol: SubmissionProtocol, weights: str | None, method: str
) -> tuple[Selection, str]:
    """Pick, per cell of the protocol, the newest record of one set of weights; refuse what does not fit.

    Returns the selection and the weights' id (sha256 of the checkpoint, or of the pretrained weights)."""
    records = list(records)
    by_weights: dict[str, list[Record]] = {}
    for r in records:
        by_weights.setdefault(_weights_id(r.model), []).append(r)
    if weights is not None:
        picked = [w for w in by_weights if w == weights]
        if not picked:
            have = ", ".join(w[:12] for w in sorted(by_weights))
            raise ZSBenchError(
                f"no record of {method!r} was computed with the checkpoint of sha256 {weights[:12]}... (its records "
                f"hold {have}...): the file is not the one that was evaluated, or it changed since"
            )
        records = by_weights[picked[0]]
    elif len(by_weights) > 1:
        have = ", ".join(w[:12] for w in sorted(by_weights))
        raise ZSBenchError(
            f"the records of {method!r} evaluate {len(by_weights)} sets of weights ({have}...): name the one to submit "
            "with --checkpoint PATH or --checkpoint-sha256 HEX"
        )
    labels = sorted({r.label for r in records})
    if len(labels) > 1:
        raise ZSBenchError(
            f"the records of {method!r} hold {len(labels)} variants ({'; '.join(labels)}): pass one of them, quoted, "
            "as --method"
        )
    sel = Selection(protocol, {})
    for r in sorted(records, key=lambda r: r.created_utc):
        tier = tier_of(r.dataset, r.attack)
        if tier is not None and tier != protocol.tier:
            raise ZSBenchError(
                f"records mix tiers: {_describe(r)} is of the {tier} tier, the {protocol.name} protocol "
                f"{'is of the ' + protocol.tier + ' tier' if protocol.tier else 'has no tier'}; a submission holds "
                "one tier: keep each tier's records in a results folder of their own (zsbench run --out) and pass "
                "that one with --results"
            )
        cell = protocol.cell_of(r)
        if cell is None:
            sel.left_out.append(r)
            continue
        if not tier_fits(protocol, cell, r):
            raise ZSBenchError(
                f"records mix tiers: {_describe(r)} is on {r.n} of {r.dataset.get('n_total')} images, not of the "
                f"{protocol.tier} tier the {protocol.name} protocol takes (every image of the split); run it with "
                f"`{protocol.command}` or leave that record out of the --results folder"
            )
        evaluation = r.evaluation or {}
        if evaluation and not evaluation.get("adaptive", True):
            sel.companions.append(r)
            continue
        key = (r.dataset["id"], cell.label)
        if key in sel.chosen:
            sel.superseded.append(sel.chosen[key])
        sel.chosen[key] = r  # sorted by creation: the newest wins, as in the leaderboard
    missing = [(d, c.label) for d in protocol.datasets for c in protocol.cells if (d, c.label) not in sel.chosen]
    if missing:
        shown = "; ".join(f"{d} {t}" for d, t in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ZSBenchError(
            f"the records of {method!r} miss {len(missing)} of the {protocol.name} protocol's "
            f"{len(protocol.datasets) * len(protocol.cells)} (dataset, threat) cells: {shown}{more}; run "
            f"`{protocol.command.replace('METHOD', method)}` to fill them"
        )
    # a defense evaluated only non-adaptively has no adaptive record to fill its robust cells: refused above
    knobs = {json.dumps(profile_knobs(r.profile), sort_keys=True): r for r in sel.chosen.values()}
    if len(knobs) > 1:
        (ka, a), (kb, b) = list(knobs.items())[:2]
        diff = "; ".join(knob_differences(json.loads(ka), json.loads(kb)))
        raise ZSBenchError(
            f"records mix profiles ({diff}: {a.path} vs {b.path}); a submission is evaluated under one profile: "
            "re-run the odd records with the other's --profile"
        )
    weights_id = _weights_id(next(iter(sel.chosen.values())).model)
    return sel, weights_id


def verify_checkpoint(path: str | os.PathLike) -> str:
    """The sha256 that identifies a checkpoint, recomputed from its bytes: for our folder, the weights file's hash,
    which must also be the one its meta.json states; for a foreign file, the file's. One line if broken."""
    p = Path(path)
    if p.is_dir():
        if not (p / META_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
            raise ZSBenchError(f"--checkpoint {p}: a checkpoint folder holds {WEIGHTS_FILE} and {META_FILE}")
        stated = read_meta(p / META_FILE).get("weights_sha256")
        actual = sha256_file(p / WEIGHTS_FILE)
        if actual != stated:
            raise ZSBenchError(
                f"--checkpoint {p}: broken checkpoint: {WEIGHTS_FILE} has sha256 {actual[:16]}..., its {META_FILE} "
                f"says {str(stated)[:16]}...; copy the checkpoint again"
            )
        return actual
    if not p.is_file():
        raise ZSBenchError(f"--checkpoint {p}: no such checkpoint file or folder")
    return sha256_file(p)


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.")
    return (s or "method")[:60]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _threat(r: Record, protocol: SubmissionProtocol) -> str:
    cell = protocol.cell_of(r)
    return cell.label if cell is not None else r.threat


def sanity_failures(records: Sequence[Record]) -> list[str]:
    """Every failed sanity check of one model's records, a line each: each record's own and the cross-record ones
    (AutoAttack above PGD, robust accuracy rising with eps, a defense's adaptive above non-adaptive ...)."""
    out = []
    for r in records:
        for c in (r.sanity or {}).get("checks", []):
            if not c.get("passed", True):
                out.append(f"{r.dataset['id']} / {r.threat}: {c.get('detail') or c['name']}")
    df = records_frame(None, records=records)
    if not df.empty:
        df["row"] = _row_labels(df)
        checks = cross_record_checks(df)
        for _, c in checks.iterrows() if not checks.empty else []:
            if not c["check"]["passed"]:
                out.append(f"{c['dataset']} / {', '.join(c['tables'])}: {c['check']['detail']}")
    return sorted(set(out))


@dataclass
class Submitted:
    folder: Path
    archive: Path | None
    submission: dict
    selection: Selection


def submit(
    *,
    results: Sequence[str | os.PathLike],
    method: str,
    protocol: str,
    card: dict,
    out: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_sha256: str | None = None,
    checkpoint_url: str | None = None,
    explanation: str | None = None,
    archive: bool = False,
    force: bool = False,
) -> Submitted:
    """Build the submission directory (see the module docstring) under ``out``; returns where it went."""
    proto = get_protocol(protocol)
    if checkpoint is not None and checkpoint_sha256 is not None:
        raise ZSBenchError("give the checkpoint once: --checkpoint PATH (hashed here) or --checkpoint-sha256 HEX")
    if checkpoint_sha256 is not None:
        checkpoint_sha256 = checkpoint_sha256.strip().lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", checkpoint_sha256):
            raise ZSBenchError(
                f"--checkpoint-sha256 {checkpoint_sha256[:70]!r} is not a sha256 (64 hex digits, e.g. from sha256sum)"
            )
    if checkpoint_url is not None and not re.fullmatch(r"(https?://|hf-hub:)\S+", checkpoint_url):
        raise ZSBenchError(
            f"--checkpoint-url {checkpoint_url[:80]!r} is not a download address (https://..., or hf-hub:OWNER/NAME)"
        )
    if explanation is not None and len(explanation.strip()) < MIN_EXPLANATION:
        raise ZSBenchError(
            f"--explain {explanation!r} is too short to explain a failed sanity check: say in a sentence why the "
            "numbers stand (at least 20 characters)"
        )
    verified = "none"
    weights = None
    if checkpoint is not None:
        weights, verified = verify_checkpoint(checkpoint), "file"
    elif checkpoint_sha256 is not None:
        weights, verified = checkpoint_sha256, "hash"
    records = _records_of([Path(r) for r in results], method)
    if weights is not None and not any(_is_tuned(r.model) for r in records):
        m = records[0].model
        raise ZSBenchError(
            f"the records of {method!r} evaluate the pretrained weights {m.get('pretrained')!r} ({m.get('arch')}), "
            "not a checkpoint: leave --checkpoint and --checkpoint-sha256 out"
        )
    sel, weights_id = select(records, proto, weights, method)
    first = next(iter(sel.chosen.values()))
    model = first.model
    tuned = _is_tuned(model)
    if tuned and weights is None:
        raise ZSBenchError(
            f"the records of {method!r} evaluate a fine-tuned checkpoint (sha256 {weights_id[:12]}...): give its file "
            "with --checkpoint PATH (hashed here) or its sha256 with --checkpoint-sha256, and where to download it "
            "with --checkpoint-url"
        )
    if tuned and checkpoint_url is None:
        raise ZSBenchError(
            f"the records of {method!r} evaluate a fine-tuned checkpoint: say where reviewers can download it with "
            "--checkpoint-url https://... (or hf-hub:OWNER/NAME)"
        )
    if not tuned and weights is not None:
        raise ZSBenchError(
            f"the records of {method!r} evaluate the pretrained weights {model.get('pretrained')!r} "
            f"({model.get('arch')}), not a checkpoint: leave --checkpoint and --checkpoint-sha256 out"
        )
    card = dict(card)
    arch = model["arch"]
    if card.get("architecture", arch) != arch:
        raise ZSBenchError(f"the card says architecture {card['architecture']!r}, the records evaluate {arch!r}")
    card["architecture"] = arch
    defended = any(r.defense for r in sel.chosen.values())
    if bool(card["test_time_defense"]) != defended:
        raise ZSBenchError(
            f"the card says test_time_defense {str(card['test_time_defense']).lower()}, the records "
            f"{'are' if defended else 'are not'} of a test-time defense: set it to {str(defended).lower()}"
        )
    card["method_id"] = first.method
    chosen = sorted(sel.chosen.values(), key=lambda r: (proto.datasets.index(r.dataset["id"]), r.threat))
    everything = chosen + sorted(sel.companions, key=lambda r: str(r.path))
    keys = sorted(r.record_key for r in everything)
    digest = hashlib.sha256(json.dumps([keys, weights_id, card], sort_keys=True).encode()).hexdigest()[:12]
    sub_id = f"{_slug(card['name'])}-{proto.name}-{digest}"
    out = Path(out)
    final = out / sub_id
    if (final.exists() or final.is_symlink()) and not force:
        raise ZSBenchError(f"{final} exists (a submission of these records): remove it, or pass --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sub_id}.", dir=out))
    except OSError as e:
        raise ZSBenchError(f"cannot write under --out {out} ({e.strerror or e}): choose a writable folder") from None
    try:
        entries = []
        for r in everything:
            rel = Path("records") / r.method / r.dataset["id"] / Path(str(r.path)).name
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.path, dest)
            got = RecordStore.read_path(dest)  # a record changed while being copied is refused here
            if got.record_key != r.record_key:
                raise ZSBenchError(f"{r.path} changed while it was being copied; run zsbench submit again")
            evaluation = "plain" if not r.evaluation else ("adaptive" if r.evaluation["adaptive"] else "non-adaptive")
            entries.append(
                {
                    "file": rel.as_posix(),
                    "sha256": _file_sha256(dest),
                    "record_key": r.record_key,
                    "dataset": r.dataset["id"],
                    "threat": _threat(r, proto),
                    "evaluation": evaluation,
                    "correct": int(r.result["correct"]),
                    "n": r.n,
                }
            )
        failed = sanity_failures(list(RecordStore(tmp).iter_records()))
        if failed and explanation is None:
            raise ZSBenchError(
                f"{len(failed)} sanity check{'s' if len(failed) > 1 else ''} failed ({failed[0]}): the numbers need a "
                "second look; if they stand, say why with --explain TEXT (shown beside them on the site)"
            )
        submission = {
            "schema": SCHEMA_ID,
            "submission_id": sub_id,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "software": {"robustbench_zs": __version__, "records_written_by": first.software["robustbench_zs"]},
            "protocol": proto.to_json(),
            "card": card,
            "checkpoint": {
                "sha256": weights_id if tuned else None,
                "url": checkpoint_url,
                "verified": verified,
                "pretrained": model.get("pretrained"),
            },
            "profile": profile_knobs(first.profile),
            "sanity": {"failed": failed, "explanation": explanation.strip() if failed and explanation else None},
            "records": entries,
        }
        errors = schema_errors(submission)
        if errors:  # a bug of ours, or a card field the schema refuses
            raise ZSBenchError(f"the submission does not follow {SCHEMA_PATH.name}: {errors[0]}")
        (tmp / SUBMISSION_FILE).write_text(json.dumps(submission, indent=2, ensure_ascii=False) + "\n", "utf-8")
        tmp.chmod(0o755)
        replace_folder(tmp, final)  # replaces an existing one only under --force (refused above otherwise)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tarball = _archive(final) if archive else None
    return Submitted(final, tarball, submission, sel)


def _archive(folder: Path) -> Path:
    """``<folder>.tar.gz`` beside it, written whole or not at all."""
    target = folder.with_name(folder.name + ".tar.gz")
    fd, tmp = tempfile.mkstemp(prefix=f".{folder.name}.", suffix=".tar.gz.tmp", dir=folder.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def check_submission(folder: str | os.PathLike) -> tuple[dict, list[Record]]:
    """Read a submission directory and check it whole: submission.json against the schema, every record file's
    sha256 against its entry, every record valid and of the stated protocol cell. ZSBenchError names the first
    fault; returns the submission and its records."""
    folder = Path(folder)
    f = folder / SUBMISSION_FILE
    try:
        sub = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ZSBenchError(f"{f}: not a readable submission ({str(e).splitlines()[0][:100]})") from None
    errors = schema_errors(sub)
    if errors:
        raise ZSBenchError(f"{f}: does not follow the submission schema: {errors[0]}")
    proto = get_protocol(sub["protocol"]["name"])
    if sub["protocol"] != proto.to_json():
        raise ZSBenchError(f"{f}: its protocol block is not the {proto.name} protocol of this version")
    root = folder.resolve()
    records = []
    for e in sub["records"]:
        p = (folder / e["file"]).resolve()
        if root not in p.parents or ".." in Path(e["file"]).parts:
            raise ZSBenchError(f"{f}: record file {e['file']!r} lies outside the submission")
        if not p.is_file():
            raise ZSBenchError(f"{f}: record file {e['file']} is missing")
        if _file_sha256(p) != e["sha256"]:
            raise ZSBenchError(f"{f}: {e['file']} does not have the sha256 its entry states (changed after submit)")
        try:
            r = RecordStore.read_path(p)
        except (ValueError, OSError) as err:
            raise ZSBenchError(f"{f}: {e['file']} is not a valid record ({err})") from None
        if r.record_key != e["record_key"] or r.dataset["id"] != e["dataset"] or r.result["correct"] != e["correct"]:
            raise ZSBenchError(f"{f}: {e['file']} is not the record its entry describes")
        cell = proto.cell_of(r)
        if cell is None or not tier_fits(proto, cell, r):
            raise ZSBenchError(f"{f}: {e['file']} is not of the {proto.name} protocol")
        records.append(r)
    # what submit checked, checked again: a submission.json edited by hand cannot drop a cell, hide a failed sanity
    # check, or name other weights than its records were computed with
    cells: dict[tuple, int] = {}
    for r in records:
        adaptive = (r.evaluation or {}).get("adaptive", True)
        key = (r.dataset["id"], proto.cell_of(r).label, adaptive)
        cells[key] = cells.get(key, 0) + 1
    missing = [(d, c.label) for d in proto.datasets for c in proto.cells if (d, c.label, True) not in cells]
    if missing:
        raise ZSBenchError(
            f"{f}: the records miss {len(missing)} cell{'s' if len(missing) > 1 else ''} of the {proto.name} protocol ({missing[0][0]} "
            f"{missing[0][1]}{' ...' if len(missing) > 1 else ''})"
        )
    twice = [k for k, n in cells.items() if n > 1]
    if twice:
        raise ZSBenchError(
            f"{f}: {len(twice)} cell{'s hold' if len(twice) > 1 else ' holds'} two records ({twice[0][0]} {twice[0][1]})"
        )
    weights = {_weights_id(r.model) for r in records}
    stated = sub["checkpoint"]["sha256"]
    if len(weights) != 1 or (stated is not None and stated not in weights):
        raise ZSBenchError(f"{f}: its records were not all computed with the checkpoint it states")
    if {r.model["arch"] for r in records} != {sub["card"]["architecture"]}:
        raise ZSBenchError(f"{f}: its card's architecture is not the one its records evaluate")
    failed = sanity_failures(records)
    if failed and not sub["sanity"].get("explanation"):
        raise ZSBenchError(
            f"{f}: {len(failed)} sanity check{'s fail' if len(failed) > 1 else ' fails'} without an explanation "
            f"({failed[0]})"
        )
    sub["sanity"]["failed"] = failed  # as the records say, not as the file says
    return sub, records
