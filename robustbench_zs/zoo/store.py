"""The zoo on disk: ``<models>/zoo/<id>/<file>`` plus ``source.json``; download, verify and resolve.

``source.json`` says where the file came from (URL, time), its size and the sha256 computed when it was stored, and
whether that sha256 was checked against a value the host publishes (``verified_against_published``). When no
published value is known, the recorded sha256 is what later ``verify`` calls compare against.

Nothing here unpickles a file by itself: :func:`verify` reads the weights with
:func:`robustbench_zs.weights.load_visual_state` (safetensors, or ``torch.load(weights_only=True)``), which
refuses a file that needs arbitrary unpickling before any of its code can run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import open_clip
import torch

from ..atomic import write_text
from ..errors import ZSBenchError, writing
from ..models import loader  # noqa: F401  (registers the package's tiny and world architectures with open_clip)
from ..provenance import default_models_dir, sha256_file
from ..version import __version__
from ..weights import apply_visual_state, load_visual_state
from . import registry
from .fetch import MODELS_HINT, FetchError, HTMLPageError, fetch
from .registry import Source, ZooEntry

ZOO_DIR = "zoo"
SOURCE_FILE = "source.json"
SCHEME = "zoo:"
#: Environment variable that points every download at a mirror holding ``<id>/<file>``.
MIRROR_ENV = "ZSBENCH_ZOO_BASE_URL"

_NOT_PUBLISHED = (
    "no published sha256 is known for this file: the sha256 above was computed when it was stored and is not "
    "verified against a published value; later verifies compare against it"
)


def zoo_root(models_dir: str | os.PathLike | None = None) -> Path:
    """``<models>/zoo`` (``$ZSBENCH_MODELS`` or ``./models`` when ``models_dir`` is None)."""
    return Path(models_dir if models_dir is not None else default_models_dir()) / ZOO_DIR


def entry_dir(zoo_id: str, models_dir: str | os.PathLike | None = None) -> Path:
    return zoo_root(models_dir) / zoo_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n", instead=MODELS_HINT)


def read_record(folder: Path) -> dict | None:
    """The ``source.json`` of a zoo folder, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("file"), str) else None


@dataclass
class LocalState:
    """What of an entry is on disk.

    Attributes:
        status: ``missing``, ``partial`` (a ``.part`` to resume), ``downloaded`` (sha256 recorded, no published value
            to check it against), ``verified`` (matched the published sha256) or ``damaged`` (the file's size is not
            the recorded one).
        path: the stored file, when there is one.
        record: its ``source.json``.
        partial_bytes: bytes of the largest ``.part`` file.
    """

    status: str
    path: Path | None = None
    record: dict | None = None
    partial_bytes: int = 0


def local_state(entry: ZooEntry, models_dir: str | os.PathLike | None = None) -> LocalState:
    """What is stored for ``entry`` (cheap: sizes only, nothing is hashed)."""
    folder = entry_dir(entry.id, models_dir)
    record = read_record(folder)
    if record is not None:
        path = folder / Path(record["file"]).name
        if path.is_file():
            if record.get("size") is not None and path.stat().st_size != record["size"]:
                return LocalState("damaged", path, record)
            status = "verified" if record.get("verified_against_published") else "downloaded"
            return LocalState(status, path, record)
    parts = [p.stat().st_size for p in folder.glob("*.part") if p.is_file()]
    if parts:
        return LocalState("partial", partial_bytes=max(parts))
    return LocalState("missing")


def stored_name(zoo_id: str, file_name: str) -> str:
    """The name a zoo file is stored under: the id plus the file's suffix (``robustvlm-fare2-vit-l-14.bin``).

    Named by id, a file says what it is wherever its name is shown (the result records keep it); ``source.json``
    keeps the original name.
    """
    suffix = ".pth.tar" if file_name.endswith(".pth.tar") else Path(file_name).suffix
    return zoo_id + suffix


def _mirror_url(base: str, entry: ZooEntry, source: Source) -> str:
    return f"{base.rstrip('/')}/{entry.id}/{source.file}"


def _hint(entry: ZooEntry) -> str:
    return f"download it by hand and run `zsbench models verify {entry.id} --file PATH`"


def download(
    zoo_id: str,
    models_dir: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Fetch ``zoo_id`` into ``<models>/zoo/<id>/``; returns its ``source.json`` record.

    The entry's sources are tried in order; a source the server does not have, or cannot serve (network errors), is
    skipped for the next. A partial file of an earlier call is resumed. With ``mirror`` (or ``$ZSBENCH_ZOO_BASE_URL``)
    every file is fetched from ``<mirror>/<id>/<file>`` instead. An entry already stored is left alone unless
    ``force``.

    Raises:
        ZSBenchError: one line: an HTML page instead of weights, a sha256 mismatch (the file is deleted), or no
            source could be fetched (with what to do).
    """
    entry = registry.get_entry(zoo_id)
    folder = entry_dir(entry.id, models_dir)
    state = local_state(entry, models_dir)
    if state.status in ("downloaded", "verified") and not force:
        log(f"{entry.id}: already stored as {state.path} ({state.status}); --force downloads it again")
        return state.record or {}
    sources = [s for s in entry.sources if not s.manual]
    if not sources:
        raise ZSBenchError(
            f"{entry.id} has no direct download: get it from {entry.sources[0].url} by hand, then run "
            f"`zsbench models verify {entry.id} --file PATH`"
        )
    base = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    try:
        return _download_first(entry, sources, folder, base, progress, log)
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when the attempt left it empty


def _download_first(entry: ZooEntry, sources: list[Source], folder: Path, base: str | None, progress: bool, log):
    failures = []
    for source in sources:
        url = _mirror_url(base, entry, source) if base and not source.packaged else source.http_url
        target = folder / stored_name(entry.id, source.file)
        log(f"{entry.id}: {'copying' if source.packaged else 'downloading'} {url}")
        try:
            if source.packaged:
                got = copy_packaged(source, target)
            else:
                got = fetch(url, target, sha256=source.sha256, size=source.size, progress=progress)
        except HTMLPageError as e:
            raise ZSBenchError(f"{entry.id}: {e}; {_hint(entry)}") from None
        except FetchError as e:
            failures.append(str(e))
            continue
        except ZSBenchError as e:
            raise ZSBenchError(f"{entry.id}: {e}") from None
        if got.resumed_from:
            log(f"{entry.id}: resumed at byte {got.resumed_from}")
        record = _record(entry, source, got.path, got.sha256, got.size, url=url, how="zsbench models download")
        previous = read_record(folder)
        _write_json_atomic(folder / SOURCE_FILE, record)
        if previous and previous.get("file") != target.name:
            (folder / Path(previous["file"]).name).unlink(missing_ok=True)
        log(f"{entry.id}: {got.path} ({got.size} bytes), sha256 {got.sha256}: {record['verification']}")
        return record
    raise ZSBenchError(
        f"could not download {entry.id}: {'; '.join(failures)}; check the network (or --mirror / ${MIRROR_ENV}), or "
        f"{_hint(entry)}"
    )


def copy_packaged(source: Source, target: Path):
    """A ``package:`` source: the file shipped inside this package, copied (no network) and sha256-checked."""
    path = source.packaged_path
    if not path.is_file():
        raise ZSBenchError(f"the shipped file {path} is missing; reinstall robustbench_zs")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with writing(target, cleanup=(tmp,)):
        shutil.copyfile(path, tmp)
        sha = sha256_file(tmp)  # checked before it takes the target's name: a damaged copy never lands
        if source.sha256 is not None and sha != source.sha256:
            tmp.unlink(missing_ok=True)
            raise ZSBenchError(
                f"the shipped file {path} has sha256 {sha}, not {source.sha256}; reinstall robustbench_zs"
            )
        os.replace(tmp, target)
    return SimpleNamespace(path=target, sha256=sha, size=target.stat().st_size, resumed_from=0)


def _record(entry: ZooEntry, source: Source, path: Path, sha256: str, size: int, *, url: str, how: str) -> dict:
    verified = source.sha256 is not None and sha256 == source.sha256
    return {
        "id": entry.id,
        "file": path.name,
        "source_file": source.file,
        "url": url,
        "source": source.url,
        "format": source.format,
        "sha256": sha256,
        "size": size,
        "published_sha256": source.sha256,
        "verified_against_published": verified,
        "verification": "matches the published sha256" if verified else _NOT_PUBLISHED,
        "stored_utc": _now(),
        "stored_by": f"{how} (robustbench_zs {__version__})",
        "method": entry.method,
        "arch": entry.arch,
        "pretrained": entry.pretrained,
        "eps": entry.eps,
    }


def _source_for(entry: ZooEntry, path: Path, sha256: str, record: dict | None) -> Source:
    """Which source a file is: by published sha256, by the stored record, by file name, else the unpublished one."""
    for s in entry.sources:
        if s.sha256 == sha256:
            return s
    if record is not None:
        for s in entry.sources:
            if s.url == record.get("source") and s.file == record.get("source_file"):
                return s
    for s in entry.sources:
        if s.file == path.name:
            return s
    unpublished = [s for s in entry.sources if s.sha256 is None]
    if unpublished:
        return unpublished[0]
    published = ", ".join(f"{s.sha256[:16]}... ({s.file})" for s in entry.sources if s.sha256)
    raise ZSBenchError(
        f"{path}: sha256 {sha256[:16]}... matches none of the published sha256 of {entry.id} ({published}): not that "
        "file, or a corrupted copy; download it again"
    )


def _detected_format(info: dict) -> str:
    if info.get("format") == "tecoa/pmg_aft":
        return "tecoa_official"
    if info.get("format") == "robustbench_zs":
        return "robustbench_zs"
    return "open_clip" if "visual." in (info.get("stripped_prefixes") or []) else "visual"


def check_arch(state: dict, arch: str) -> None:
    """Every key and shape of ``arch``'s image tower must be in ``state``; builds the tower on the meta device."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip announces that the (meta) weights are random
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(arch, pretrained=None, device="meta")
            apply_visual_state(model, state, arch)
    except RuntimeError as e:
        raise ZSBenchError(f"cannot build {arch} to check the file against it: {str(e).splitlines()[0]}") from None
    finally:
        root.setLevel(level)


def verify(
    zoo_id: str,
    file: str | os.PathLike | None = None,
    models_dir: str | os.PathLike | None = None,
    *,
    install: bool = True,
    arch_check: bool = True,
) -> dict:
    """Check the stored file of ``zoo_id`` (or ``file``): sha256, a safe load, and the architecture's keys.

    The sha256 is compared with the published one, else with the one recorded at download. The weights are read with
    :func:`~robustbench_zs.weights.load_visual_state`, which never runs code from the file (a pickle that
    needs more than tensors is refused). With ``arch_check``, every key and shape of the entry's image tower must be
    there. A ``file`` that passes is stored as the entry's copy (hard link, else copy) unless ``install`` is False.

    Returns:
        a report: id, path, size, sha256, verification, verified_against_published, format, declared_format,
        reader, num_tensors, ignored_keys, arch, arch_checked, installed (the stored path, when ``file`` was stored).
    """

    entry = registry.get_entry(zoo_id)
    record = None
    if file is None:
        state = local_state(entry, models_dir)
        if state.path is None:
            where = entry_dir(entry.id, models_dir)
            what = "only partly downloaded" if state.status == "partial" else "not downloaded"
            md = f" --models-dir {models_dir}" if models_dir is not None else ""
            raise ZSBenchError(
                f"{entry.id} is {what} under {where}; run `zsbench models download {entry.id}{md}`, or pass --file PATH"
            )
        path, record = state.path, state.record
    else:
        path = Path(file)
        if not path.is_file():
            raise ZSBenchError(f"{path}: no such file")
    size = path.stat().st_size
    digest = sha256_file(path)  # memoized: load_visual_state's identity below reuses it
    source = _source_for(entry, path, digest, record)
    if source.sha256 is not None and digest == source.sha256:
        verified, verification = True, "matches the published sha256"
    elif source.sha256 is not None:
        raise ZSBenchError(
            f"{path}: sha256 {digest[:16]}... does not match the published {source.sha256[:16]}... of {entry.id}: a "
            f"corrupted or different file; download it again (zsbench models download {entry.id} --force)"
        )
    elif record is not None and record.get("sha256"):
        if digest != record["sha256"]:
            raise ZSBenchError(
                f"{path}: sha256 {digest[:16]}... is not the {str(record['sha256'])[:16]}... recorded when it was "
                f"stored: the file changed since; download it again (zsbench models download {entry.id} --force)"
            )
        verified, verification = False, "matches the sha256 recorded at download (no published value is known)"
    else:
        verified, verification = False, "no published sha256 is known: nothing to compare with"
    state_dict, info = load_visual_state(path, entry.arch)
    if arch_check:
        try:
            check_arch(state_dict, entry.arch)
        except ZSBenchError as e:
            raise ZSBenchError(f"{path}: {e}") from None
    report = {
        "id": entry.id,
        "path": str(path),
        "size": size,
        "sha256": digest,
        "verification": verification,
        "verified_against_published": verified,
        "format": _detected_format(info),
        "reader": "safetensors" if info.get("format") == "safetensors" else "torch.load(weights_only=True)",
        "declared_format": source.format,
        "num_tensors": info.get("num_tensors"),
        "ignored_keys": info.get("ignored_keys", 0),
        "arch": entry.arch,
        "arch_checked": arch_check,
        "installed": None,
    }
    if file is not None and install:
        report["installed"] = str(_install(entry, source, path, digest, size, models_dir))
    elif record is not None:
        record["last_verified_utc"] = _now()
        _write_json_atomic(path.parent / SOURCE_FILE, record)
    return report


def _install(entry: ZooEntry, source: Source, path: Path, sha256: str, size: int, models_dir) -> Path:
    """Store a checked file as the entry's copy: a hard link where possible, else a copy, moved in atomically."""
    folder = entry_dir(entry.id, models_dir)
    target = folder / stored_name(entry.id, source.file or path.name)
    with writing(target, instead=MODELS_HINT):
        folder.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and os.path.samefile(target, path)):
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        with writing(target, instead=MODELS_HINT, cleanup=(tmp,)):
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, target)
    previous = read_record(folder)
    record = _record(
        entry, source, target, sha256, size, url=path.resolve().as_uri(), how="zsbench models verify --file"
    )
    _write_json_atomic(folder / SOURCE_FILE, record)
    if previous and previous.get("file") != target.name:
        with contextlib.suppress(OSError):
            (folder / Path(previous["file"]).name).unlink()
    return target


def resolve_zoo_checkpoint(
    value: str | os.PathLike,
    models_dir: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    pretrained: str | None = None,
) -> Path:
    """The file behind ``zoo:ID``; any other value comes back as a Path, unchanged.

    Args:
        value: ``zoo:<id>`` or a path.
        models_dir: the models folder (``$ZSBENCH_MODELS`` or ``./models`` when None).
        arch / pretrained: when given, must be the entry's ``arch`` / ``pretrained`` (the image encoder only fits the
            tower it was fine-tuned from), else a one-line error says which to pass.

    Raises:
        ZSBenchError: unknown id (the message lists the known ids), another architecture, not (completely)
            downloaded, or a stored file whose size or sha256 is not the published one (where the host publishes it)
            or the one recorded when it was stored (the message says the command to run).
    """
    text = os.fspath(value)
    if not text.startswith(SCHEME):
        return Path(text)
    entry = registry.get_entry(text[len(SCHEME) :].strip())
    wanted = f"--arch {entry.arch} --pretrained {entry.pretrained}"
    if arch is not None and arch != entry.arch:
        raise ZSBenchError(f"zoo:{entry.id} is a {entry.arch} image encoder, not {arch}; run with {wanted}")
    if pretrained is not None and pretrained != entry.pretrained:
        raise ZSBenchError(
            f"zoo:{entry.id} was fine-tuned from {entry.arch}/{entry.pretrained}, not {pretrained}; run with {wanted}"
        )
    state = local_state(entry, models_dir)
    md = f" --models-dir {models_dir}" if models_dir is not None else ""
    if state.status == "damaged":
        raise ZSBenchError(
            f"{state.path} is not the size recorded in its {SOURCE_FILE}: run `zsbench models download {entry.id}"
            f"{md} --force`"
        )
    if state.path is None:
        what = "only partly downloaded" if state.status == "partial" else "not downloaded"
        raise ZSBenchError(
            f"zoo:{entry.id} is {what} under {zoo_root(models_dir)}; run `zsbench models download {entry.id}{md}`"
        )
    _check_stored_sha256(entry, state, f"zsbench models download {entry.id}{md} --force")
    return state.path


def _check_stored_sha256(entry: ZooEntry, state: LocalState, fix: str) -> None:
    """The stored file's sha256 must be the published one (where known), else the one recorded when it was stored.

    The hash is memoized per (path, size, mtime), so the load that follows does not read the file twice.
    """
    record = state.record or {}
    digest = sha256_file(state.path)
    published = {s.sha256 for s in entry.sources if s.sha256 and s.file == record.get("source_file")}
    published |= {record["published_sha256"]} if isinstance(record.get("published_sha256"), str) else set()
    if published and digest not in published:
        want = ", ".join(sorted(h[:16] + "..." for h in published))
        raise ZSBenchError(
            f"{state.path}: sha256 {digest[:16]}... does not match the published {want} of {entry.id}: a corrupted "
            f"or replaced file; run `{fix}`"
        )
    recorded = record.get("sha256")
    if not published and recorded and digest != recorded:
        raise ZSBenchError(
            f"{state.path}: sha256 {digest[:16]}... is not the {str(recorded)[:16]}... recorded in its {SOURCE_FILE} "
            f"when it was stored: the file changed since; run `{fix}`"
        )
