"""HTTP(S) download of one file with the standard library: resumable, checked, and moved into place atomically.

The bytes stream into ``<file>.part`` beside the target; a ``<file>.part.json`` remembers which URL (and ETag) they
came from. A later call with a ``.part`` present asks for the rest (``Range: bytes=N-``, plus ``If-Range`` when the
server gave an ETag); a server that answers with the whole file instead (``200``) restarts the file from zero. Only
a complete file whose sha256 matches the expected one (when one is given) is renamed to its final name.

An HTML page where weights were expected (a login page, a quota notice, a Google Drive confirmation page) is caught
by its Content-Type or its first bytes, and nothing is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import ZSBenchError, writing
from ..version import __version__
from ..weights import CorruptCheckpointError, check_complete, html_head, looks_like_html

CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = f"robustbench_zs/{__version__} (zsbench models download)"
#: what to do when the models folder cannot be written
MODELS_HINT = "pass --models-dir DIR (or set ZSBENCH_MODELS) with another folder"


class FetchError(ZSBenchError):
    """A network or server problem (the caller may try another source)."""


class NotFoundError(FetchError):
    """The server has no such file (HTTP 404 / 410)."""


class IntegrityError(ZSBenchError):
    """The server sent something that is not the expected file (an HTML page, the wrong size or sha256)."""


class HTMLPageError(IntegrityError):
    """The server sent an HTML page where a weights file was expected."""


@dataclass
class Fetched:
    """A completed download."""

    path: Path
    url: str
    sha256: str
    size: int
    resumed_from: int  # bytes already on disk when this call started (0: a fresh download)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _read_sidecar(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _discard(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _open(url: str, offset: int, etag: str | None):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if etag and not etag.startswith("W/"):  # If-Range takes a strong validator only
            headers["If-Range"] = etag
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)  # noqa: S310


def _network_error(url: str, e: BaseException) -> FetchError:
    if isinstance(e, urllib.error.HTTPError):
        with contextlib.suppress(Exception):
            e.close()
        cls = NotFoundError if e.code in (404, 410) else FetchError
        return cls(f"{url}: HTTP {e.code} {e.reason}")
    reason = getattr(e, "reason", None) or e
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return FetchError(f"{url}: {text}")


def _html_error(url: str, hint: str) -> HTMLPageError:
    return HTMLPageError(
        f"{url} sent an HTML page ({hint}), not weights: a login page, a quota notice or a confirmation page "
        "(Google Drive does that); nothing was kept"
    )


def _start_byte(resp) -> int:
    """Where the body of a 206 response starts (``Content-Range: bytes START-END/TOTAL``)."""
    rng = resp.headers.get("Content-Range", "")
    try:
        return int(rng.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _total_size(resp, offset: int) -> int | None:
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch(
    url: str, target: Path, *, sha256: str | None = None, size: int | None = None, progress: bool = True
) -> Fetched:
    """Download ``url`` to ``target`` via ``target.part``; returns a :class:`Fetched`.

    Args:
        sha256: the expected sha256; a mismatch deletes the download and raises :class:`IntegrityError`.
        size: the expected size in bytes, where known.
        progress: show a progress bar on a terminal.

    Raises:
        NotFoundError / FetchError: the server has no such file, or the network failed (a partial file is kept for
            the next call to resume).
        IntegrityError: an HTML page, a wrong size or a wrong sha256 (nothing is kept).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    sidecar = target.with_name(target.name + ".part.json")
    known = _read_sidecar(sidecar)
    offset = part.stat().st_size if part.is_file() else 0
    if offset and known.get("url") != url:
        offset = 0  # bytes from another URL (or of unknown origin): do not splice them
    resumed_from = offset
    for attempt in range(2):
        try:
            resp = _open(url, offset, known.get("etag") if offset else None)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset and attempt == 0:  # the range is past the end: start over
                offset = resumed_from = 0
                continue
            raise _network_error(url, e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise _network_error(url, e) from None
        break
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
            _discard(part, sidecar)
            raise _html_error(url, f"Content-Type {ctype}")
        if offset and resp.status != 206:
            offset = resumed_from = 0  # the server ignored the Range header: the body is the whole file
        elif offset and _start_byte(resp) != offset:
            _discard(part, sidecar)
            raise FetchError(
                f"{url} answered the request for bytes {offset}- with {resp.headers.get('Content-Range')!r}; the "
                "partial file was dropped: run the same command again to start over"
            )
        total = _total_size(resp, offset)
        if size is not None and total is not None and total != size:
            _discard(part, sidecar)
            raise IntegrityError(f"{url} is {total} bytes, not the {size} bytes published for it; nothing was kept")
        with writing(sidecar, instead=MODELS_HINT):
            sidecar.write_text(json.dumps({"url": url, "etag": resp.headers.get("ETag")}) + "\n", encoding="utf-8")
        bar = _progress_bar(target.name, total, offset, progress)
        try:
            # a full or read-only disk is one line; the bytes so far stay in the .part, so the same command resumes
            with writing(part, instead=f"{MODELS_HINT}; the partial download is kept and resumed by the same command"):
                got = _stream(resp, part, offset, url, sidecar, bar)
        finally:
            bar.close()
    if total is not None and got < total:
        raise FetchError(f"{url}: the download stopped at {got} of {total} bytes; run the same command again to resume")
    if looks_like_html(part):  # the whole file's first bytes, also when this call only fetched its rest
        _discard(part, sidecar)
        raise _html_error(url, "its first bytes are HTML")
    if size is not None and got != size:
        _discard(part, sidecar)
        raise IntegrityError(f"{url} gave {got} bytes, not the {size} bytes published for it; nothing was kept")
    digest = _sha256(part)
    if sha256 is not None and digest != sha256:
        _discard(part, sidecar)
        raise IntegrityError(
            f"{url}: sha256 {digest[:16]}... does not match the published {sha256[:16]}...; the download was deleted "
            "(a changed or corrupted file); try again, or report it if it persists"
        )
    if sha256 is None:
        _check_whole(part, url, got)
    with writing(target, instead=MODELS_HINT):
        os.replace(part, target)
    _discard(sidecar)
    return Fetched(path=target, url=url, sha256=digest, size=got, resumed_from=resumed_from)


def _stream(resp, part: Path, offset: int, url: str, sidecar: Path, bar) -> int:
    """Append the response body to ``part``; returns the size of ``part`` afterwards.

    The first bytes of every body are checked for HTML, of a resumed one too (a server may answer a range request
    with an error page): nothing of a page is written, and the partial file is dropped.
    """
    with open(part, "ab" if offset else "wb") as f:
        first = True
        while True:
            try:
                block = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise FetchError(
                    f"{url}: the download stopped at {f.tell()} bytes ({type(e).__name__}); run the same "
                    "command again to resume"
                ) from None
            if not block:
                break
            if first and html_head(block[:512]):
                f.close()
                _discard(part, sidecar)
                raise _html_error(url, "its first bytes are HTML" if not offset else "the resumed part is HTML")
            first = False
            f.write(block)
            bar.update(len(block))
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def _check_whole(part: Path, url: str, got: int) -> None:
    """With no published sha256 (and maybe no Content-Length), the file's own structure must say it is complete."""

    try:
        check_complete(part)
    except CorruptCheckpointError as e:
        raise FetchError(
            f"{url}: the download ended at {got} bytes but the file is not complete ({e.reason}); run the same "
            "command again to resume"
        ) from None


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(name: str, total: int | None, initial: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return _NoBar()

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)
