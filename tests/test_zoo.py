"""The checkpoint zoo: downloads from a local HTTP server (resume, Range ignored, HTML, sha256), safe verify, zoo: ids."""

from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from robustbench_zs.cli import main
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import ModelSpec, load_model
from robustbench_zs.registry import Registry
from robustbench_zs.zoo import registry, store
from robustbench_zs.zoo.registry import Source, ZooEntry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md"
ARCH = "zsbench-tiny"


# --- a local HTTP server ------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Serves the server's ``root`` folder; honours ``Range: bytes=N-`` unless ``server.honour_range`` is False.

    ``send_length`` False leaves out Content-Length (the body ends when the connection closes), ``cut_after`` sends
    only that many bytes, and ``range_body`` is sent instead of the rest of the file to a range request.
    """

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append({"path": self.path, "range": rng})
        p = srv.root / self.path.lstrip("/")
        if not p.is_file():
            self.send_error(404)
            return
        data = p.read_bytes()
        start = 0
        if rng and srv.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1)) if m else 0
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if start and srv.range_body is not None:  # answer a range request with something else (an error page)
            body = srv.range_body
        self.send_header("Content-Type", srv.content_types.get(self.path, "application/octet-stream"))
        if srv.send_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # announce the whole length, send part of it, hang up
            body = body[: srv.cut_after]
        self.wfile.write(body)
        srv.sent.append(len(body))

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.requests, srv.sent, srv.content_types = root, [], [], {}
    srv.honour_range, srv.cut_after = True, None
    srv.send_length, srv.range_body = True, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def tiny_state():
    """A whole open_clip state dict of the tiny architecture (a few MB)."""
    sd = load_model(ModelSpec(ARCH, "random", init_seed=3)).model.state_dict()
    return {k: v.contiguous().clone() for k, v in sd.items()}


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("ZSBENCH_MODELS", str(folder))
    monkeypatch.delenv(store.MIRROR_ENV, raising=False)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(zoo_id: str, *sources: Source, arch: str = ARCH) -> ZooEntry:
    return ZooEntry(
        id=zoo_id,
        method="fare",
        arch=arch,
        pretrained="random",
        eps=2,
        norm="linf",
        train_data="synthetic",
        sources=sources,
        license="MIT",
        paper="test",
        project="test",
    )


@pytest.fixture
def zoo(monkeypatch):
    """Replace the registry with an empty one; returns a function that adds an entry."""
    fake = Registry("zoo checkpoint")
    monkeypatch.setattr(registry, "ZOO", fake)

    def add(entry: ZooEntry) -> ZooEntry:
        fake.add(entry.id, entry)
        return entry

    return add


def _serve(server, zoo_id: str, name: str, data: bytes) -> str:
    (server.root / zoo_id).mkdir(parents=True, exist_ok=True)
    (server.root / zoo_id / name).write_bytes(data)
    return f"{server.url}/{zoo_id}/{name}"


def _bin(state: dict, tmp_path: Path, name: str = "weights.bin") -> bytes:
    path = tmp_path / name
    torch.save(state, path)
    return path.read_bytes()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("zsbench: error: ")
    return lines[0]


# --- download and verify ------------------------------------------------------------------------------------------


def test_download_verify_and_resolve(server, zoo, models, tiny_state, tmp_path, capsys):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-fare", "open_clip_pytorch_model.bin", data)
    digest = hashlib.sha256(data).hexdigest()
    zoo(_entry("tiny-fare", Source(url, "open_clip_pytorch_model.bin", "open_clip", sha256=digest, size=len(data))))

    rc, out, _ = _run(capsys, "models", "download", "tiny-fare")
    assert rc == 0 and "matches the published sha256" in out
    stored = models / "zoo" / "tiny-fare" / "tiny-fare.bin"
    assert stored.read_bytes() == data
    assert not list(stored.parent.glob("*.part*"))
    record = json.loads((stored.parent / "source.json").read_text())
    assert record["sha256"] == digest and record["size"] == len(data) and record["url"] == url
    assert record["file"] == "tiny-fare.bin" and record["source_file"] == "open_clip_pytorch_model.bin"
    assert record["verified_against_published"] is True

    rc, out, _ = _run(capsys, "models", "verify", "tiny-fare")
    assert rc == 0
    assert digest in out and "matches the published sha256" in out
    assert "format   open_clip" in out and "text-tower keys ignored" in out and "matches" in out

    rc, out, _ = _run(capsys, "models", "list")
    row = next(line for line in out.splitlines() if "tiny-fare" in line)
    assert "verified" in row and "published" in row

    # a second download leaves the stored copy alone
    rc, out, _ = _run(capsys, "models", "download", "tiny-fare")
    assert rc == 0 and "already stored" in out and len(server.requests) == 1

    assert store.resolve_zoo_checkpoint("zoo:tiny-fare") == stored
    assert store.resolve_zoo_checkpoint(tmp_path / "x.pt") == tmp_path / "x.pt"
    with pytest.raises(ZSBenchError, match="--arch zsbench-tiny --pretrained random"):
        store.resolve_zoo_checkpoint("zoo:tiny-fare", arch="ViT-B-32")


def test_run_evaluates_a_zoo_checkpoint_and_records_its_sha256(server, zoo, models, tiny_state, tmp_path, capsys):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-fare", "open_clip_pytorch_model.bin", data)
    digest = hashlib.sha256(data).hexdigest()
    zoo(_entry("tiny-fare", Source(url, "open_clip_pytorch_model.bin", "open_clip", sha256=digest, size=len(data))))
    run = ["run", "--preset", "smoke", "--methods", "fare", "--checkpoint", "fare=zoo:tiny-fare", "--n", "16"]
    run += ["--attack", "none", "--out", str(tmp_path / "r")]
    rc, _, err = _run(capsys, *run)
    assert rc == 2 and "zsbench models download tiny-fare" in _error_line(err)  # not downloaded yet
    assert _run(capsys, "models", "download", "tiny-fare")[0] == 0
    rc, out, err = _run(capsys, *run)
    assert rc == 0, err
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "r" / "records").rglob("*.json")]
    assert record["model"]["checkpoint"] == f"sha256:{digest}" and record["model"]["checkpoint_name"] == "tiny-fare.bin"


def test_unpublished_sha256_is_recorded_and_checked_later(server, zoo, models, tiny_state, tmp_path, capsys):
    visual = {k[len("visual.") :]: v for k, v in tiny_state.items() if k.startswith("visual.")}
    data = _bin(visual, tmp_path, "visual.pt")
    url = _serve(server, "tiny-visual", "visual.pt", data)
    zoo(_entry("tiny-visual", Source(url, "visual.pt", "visual")))

    rc, out, _ = _run(capsys, "models", "download", "tiny-visual", "--models-dir", str(models))
    assert rc == 0 and "not verified against a published value" in out
    folder = models / "zoo" / "tiny-visual"
    record = json.loads((folder / "source.json").read_text())
    assert record["verified_against_published"] is False and record["published_sha256"] is None
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert "not verified against a published value" in record["verification"]

    rc, out, _ = _run(capsys, "models", "verify", "tiny-visual")
    assert rc == 0 and "recorded at download" in out and "format   visual" in out
    _, out, _ = _run(capsys, "models", "list")
    assert "downloaded" in next(line for line in out.splitlines() if "tiny-visual" in line)

    # the file changes afterwards: verify says so in one line
    raw = bytearray((folder / "tiny-visual.pt").read_bytes())
    raw[-100] ^= 0xFF
    (folder / "tiny-visual.pt").write_bytes(bytes(raw))
    rc, _, err = _run(capsys, "models", "verify", "tiny-visual")
    assert rc == 2 and "recorded when it was stored" in _error_line(err)


def test_resume_sends_range_and_fetches_only_the_rest(server, zoo, models, tiny_state, tmp_path, capsys):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-resume", "w.bin", data)
    zoo(_entry("tiny-resume", Source(url, "w.bin", "open_clip", sha256=hashlib.sha256(data).hexdigest())))

    server.cut_after = 100_000  # the connection drops after 100 kB
    rc, _, err = _run(capsys, "models", "download", "tiny-resume")
    assert rc == 2 and "run the same command again to resume" in _error_line(err)
    part = models / "zoo" / "tiny-resume" / "tiny-resume.bin.part"
    assert part.stat().st_size == 100_000

    server.cut_after = None
    rc, out, _ = _run(capsys, "models", "download", "tiny-resume")
    assert rc == 0 and "resumed at byte 100000" in out
    assert server.requests[-1]["range"] == "bytes=100000-"
    assert server.sent[-1] == len(data) - 100_000
    assert (models / "zoo" / "tiny-resume" / "tiny-resume.bin").read_bytes() == data
    assert not part.exists()


def test_server_that_ignores_range_still_gives_the_right_file(server, zoo, models, tiny_state, tmp_path, capsys):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-norange", "w.bin", data)
    zoo(_entry("tiny-norange", Source(url, "w.bin", "open_clip", sha256=hashlib.sha256(data).hexdigest())))

    server.cut_after = 50_000
    assert _run(capsys, "models", "download", "tiny-norange")[0] == 2
    server.cut_after, server.honour_range = None, False
    rc, out, _ = _run(capsys, "models", "download", "tiny-norange")
    assert rc == 0 and "resumed" not in out
    assert server.requests[-1]["range"] == "bytes=50000-" and server.sent[-1] == len(data)
    assert (models / "zoo" / "tiny-norange" / "tiny-norange.bin").read_bytes() == data


def test_sha256_mismatch_deletes_the_download(server, zoo, models, tiny_state, tmp_path, capsys):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-bad", "w.bin", data)
    zoo(_entry("tiny-bad", Source(url, "w.bin", "open_clip", sha256="0" * 64)))

    rc, _, err = _run(capsys, "models", "download", "tiny-bad")
    line = _error_line(err)
    assert rc == 2 and "sha256" in line and "does not match the published" in line and url in line
    folder = models / "zoo" / "tiny-bad"
    assert not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("how", ["content-type", "first-bytes"])
def test_html_page_instead_of_weights(server, zoo, models, how, capsys):
    page = b"<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>\n"
    url = _serve(server, "tiny-html", "w.bin", page)
    if how == "content-type":
        server.content_types["/tiny-html/w.bin"] = "text/html; charset=utf-8"
    zoo(_entry("tiny-html", Source(url, "w.bin", "open_clip")))

    rc, _, err = _run(capsys, "models", "download", "tiny-html")
    line = _error_line(err)
    assert rc == 2 and url in line and "HTML page" in line and "verify tiny-html --file PATH" in line
    folder = models / "zoo" / "tiny-html"
    assert not folder.exists() or not any(folder.iterdir())


def test_network_error_and_fallback_to_the_next_source(server, zoo, models, tiny_state, tmp_path, capsys):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-fb", "open_clip_pytorch_model.bin", data)
    missing = f"{server.url}/tiny-fb/open_clip_model.safetensors"  # the server has no such file
    zoo(
        _entry(
            "tiny-fb",
            Source(missing, "open_clip_model.safetensors", "open_clip"),
            Source(url, "open_clip_pytorch_model.bin", "open_clip"),
        )
    )
    rc, out, _ = _run(capsys, "models", "download", "tiny-fb")
    assert rc == 0 and missing in out
    assert (models / "zoo" / "tiny-fb" / "tiny-fb.bin").read_bytes() == data

    dead = "http://127.0.0.1:9/nothing/w.bin"  # the discard port: connection refused
    zoo(_entry("tiny-dead", Source(dead, "w.bin", "open_clip")))
    rc, _, err = _run(capsys, "models", "download", "tiny-dead")
    line = _error_line(err)
    assert rc == 2 and dead in line and "zsbench models verify tiny-dead --file PATH" in line


def test_mirror_points_every_url_at_a_local_server(server, zoo, models, tiny_state, tmp_path, monkeypatch, capsys):
    data = _bin(tiny_state, tmp_path)
    _serve(server, "tiny-mirror", "w.bin", data)
    zoo(_entry("tiny-mirror", Source("hf-hub:nobody/nothing", "w.bin", "open_clip")))
    monkeypatch.setenv(store.MIRROR_ENV, server.url)
    rc, out, _ = _run(capsys, "models", "download", "tiny-mirror")
    assert rc == 0 and f"{server.url}/tiny-mirror/w.bin" in out
    assert (models / "zoo" / "tiny-mirror" / "tiny-mirror.bin").read_bytes() == data


def test_an_xml_error_page_is_not_stored(server, zoo, models, capsys):
    page = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired'
    page += b"</Message></Error>\n"
    url = _serve(server, "tiny-xml", "w.bin", page)  # served as application/octet-stream, as S3 does
    zoo(_entry("tiny-xml", Source(url, "w.bin", "open_clip")))
    rc, _, err = _run(capsys, "models", "download", "tiny-xml")
    assert rc == 2 and "HTML page" in _error_line(err)
    folder = models / "zoo" / "tiny-xml"
    assert not folder.exists() or not any(folder.iterdir())


def test_an_html_page_sent_for_the_rest_of_a_resumed_download(server, zoo, models, tiny_state, tmp_path, capsys):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-resume-html", "w.bin", data)
    zoo(_entry("tiny-resume-html", Source(url, "w.bin", "open_clip")))
    server.cut_after = 100_000
    assert _run(capsys, "models", "download", "tiny-resume-html")[0] == 2
    server.cut_after = None
    server.range_body = b"\n\n<!DOCTYPE html><html><body>Bandwidth quota exceeded</body></html>"
    rc, _, err = _run(capsys, "models", "download", "tiny-resume-html")
    line = _error_line(err)
    assert rc == 2 and "HTML page" in line and "resumed part" in line
    folder = models / "zoo" / "tiny-resume-html"
    assert not folder.exists() or not any(folder.iterdir()), "nothing of the page (or before it) is kept"


@pytest.mark.parametrize("fmt", ["torch.save", "safetensors"])
def test_a_download_cut_short_without_content_length_is_not_accepted(
    server, zoo, models, tiny_state, tmp_path, capsys, fmt
):
    """No Content-Length and no published sha256: only the file's own structure can tell it is cut short."""
    if fmt == "torch.save":
        data = _bin(tiny_state, tmp_path)
    else:
        save_file(tiny_state, str(tmp_path / "w.safetensors"))
        data = (tmp_path / "w.safetensors").read_bytes()
    url = _serve(server, "tiny-nolength", "w.bin", data)
    zoo(_entry("tiny-nolength", Source(url, "w.bin", "open_clip")))
    server.send_length, server.cut_after = False, 100_000
    rc, _, err = _run(capsys, "models", "download", "tiny-nolength")
    line = _error_line(err)
    assert rc == 2 and "the download ended at 100000 bytes but the file is not complete" in line, line
    folder = models / "zoo" / "tiny-nolength"
    assert not (folder / "tiny-nolength.bin").exists() and not (folder / "source.json").exists()
    assert (folder / "tiny-nolength.bin.part").stat().st_size == 100_000  # kept: the next call resumes it

    server.cut_after = None
    rc, out, _ = _run(capsys, "models", "download", "tiny-nolength")
    assert rc == 0 and "resumed at byte 100000" in out
    assert (folder / "tiny-nolength.bin").read_bytes() == data


@pytest.mark.parametrize("published", [True, False])
def test_a_zoo_file_changed_after_download_is_refused_when_used(
    server, zoo, models, tiny_state, tmp_path, capsys, published
):
    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-changed", "w.bin", data)
    digest = hashlib.sha256(data).hexdigest() if published else None
    zoo(_entry("tiny-changed", Source(url, "w.bin", "open_clip", sha256=digest)))
    assert _run(capsys, "models", "download", "tiny-changed")[0] == 0
    stored = models / "zoo" / "tiny-changed" / "tiny-changed.bin"
    assert store.resolve_zoo_checkpoint("zoo:tiny-changed") == stored
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: the size check alone passes it
    stored.write_bytes(bytes(raw))
    expected = "does not match the published" if published else "recorded in its source.json"
    with pytest.raises(ZSBenchError, match=f"sha256 .*{expected}.*zsbench models download tiny-changed --force"):
        store.resolve_zoo_checkpoint("zoo:tiny-changed")
    run = ["run", "--preset", "smoke", "--methods", "fare", "--checkpoint", "fare=zoo:tiny-changed", "--n", "8"]
    rc, _, err = _run(capsys, *run, "--attack", "none", "--out", str(tmp_path / "r"))
    assert rc == 2 and expected in _error_line(err)


def test_a_full_models_disk_keeps_the_partial_download(server, zoo, models, tiny_state, tmp_path, capsys, monkeypatch):
    from robustbench_zs.zoo import fetch

    data = _bin(tiny_state, tmp_path)
    url = _serve(server, "tiny-full", "w.bin", data)
    zoo(_entry("tiny-full", Source(url, "w.bin", "open_clip")))
    real_stream = fetch._stream

    def full_after_some(resp, part, offset, *args):
        real_stream(resp, part, offset, *args)  # the whole body, then the disk is full at the fsync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fetch, "_stream", full_after_some)
    rc, _, err = _run(capsys, "models", "download", "tiny-full")
    line = _error_line(err)
    assert rc == 2 and "no space left on device while writing" in line and "--models-dir" in line, line
    assert (models / "zoo" / "tiny-full" / "tiny-full.bin.part").is_file()


# --- safe loading -------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("payload", ["open", "system"])
def test_verify_refuses_a_pickle_that_would_run_code(server, zoo, models, tiny_state, tmp_path, payload, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    func, args = (builtins.open, (str(marker), "w")) if payload == "open" else (os.system, (f"touch {marker}",))
    pickled_name = f"{func.__module__}.{func.__name__}"  # io.open, posix.system
    evil = dict(tiny_state)
    evil["extra"] = _Payload(func, args)
    data = _bin(evil, tmp_path, "evil.bin")
    assert not marker.exists()
    url = _serve(server, "tiny-evil", "evil.bin", data)
    zoo(_entry("tiny-evil", Source(url, "evil.bin", "open_clip")))

    # a hand-downloaded copy: refused, and nothing is stored
    rc, _, err = _run(capsys, "models", "verify", "tiny-evil", "--file", str(tmp_path / "evil.bin"))
    line = _error_line(err)
    assert rc == 2 and "refusing" in line and "arbitrary unpickling" in line and pickled_name in line
    assert not marker.exists() and not (models / "zoo" / "tiny-evil").exists()

    # a downloaded copy: stored (it is only bytes), then refused by verify
    assert _run(capsys, "models", "download", "tiny-evil")[0] == 0
    rc, _, err = _run(capsys, "models", "verify", "tiny-evil")
    assert rc == 2 and "refusing" in _error_line(err)
    assert not marker.exists()


def test_verify_file_stores_a_manual_download(zoo, models, tiny_state, tmp_path, capsys):
    path = tmp_path / "by-hand.safetensors"
    save_file(tiny_state, str(path))
    zoo(_entry("tiny-manual", Source("https://drive.example/folder", None, "open_clip", manual=True)))

    rc, _, err = _run(capsys, "models", "download", "tiny-manual")
    assert rc == 2 and "by hand" in _error_line(err)
    with pytest.raises(ZSBenchError, match="not downloaded"):
        store.resolve_zoo_checkpoint("zoo:tiny-manual")

    rc, out, _ = _run(capsys, "models", "verify", "tiny-manual", "--file", str(path))
    assert rc == 0 and "nothing to compare with" in out and "stored" in out
    stored = models / "zoo" / "tiny-manual" / "tiny-manual.safetensors"
    assert store.resolve_zoo_checkpoint("zoo:tiny-manual") == stored and stored.read_bytes() == path.read_bytes()
    record = json.loads((stored.parent / "source.json").read_text())
    assert record["verified_against_published"] is False and record["url"].startswith("file://")


def test_verify_checks_the_architecture(zoo, models, tmp_path, capsys):
    other = load_model(ModelSpec("zsbench-tiny-rn", "random")).model.state_dict()
    path = tmp_path / "rn.bin"
    torch.save(other, path)
    zoo(_entry("tiny-arch", Source("https://example.invalid/rn.bin", "rn.bin", "open_clip")))
    rc, _, err = _run(capsys, "models", "verify", "tiny-arch", "--file", str(path), "--no-install")
    assert rc == 2 and "another architecture than zsbench-tiny" in _error_line(err)
    rc, out, _ = _run(capsys, "models", "verify", "tiny-arch", "--file", str(path), "--no-install", "--no-arch-check")
    assert rc == 0 and "not checked" in out and not (models / "zoo").exists()


def test_verify_file_with_the_wrong_published_hash(zoo, models, tiny_state, tmp_path, capsys):
    path = tmp_path / "w.bin"
    torch.save(tiny_state, path)
    zoo(_entry("tiny-pub", Source("https://example.invalid/w.bin", "w.bin", "open_clip", sha256="1" * 64)))
    rc, _, err = _run(capsys, "models", "verify", "tiny-pub", "--file", str(path))
    assert rc == 2 and "does not match the published" in _error_line(err)


# --- the registry itself ------------------------------------------------------------------------------------------


def test_unknown_id_lists_the_known_ones(models, capsys):
    for argv in (["download", "no-such-model"], ["verify", "no-such-model"]):
        rc, _, err = _run(capsys, "models", *argv)
        line = _error_line(err)
        assert rc == 2 and "no-such-model" in line and "robustvlm-fare2-vit-l-14" in line
    with pytest.raises(ZSBenchError, match="known zoo checkpoints"):
        store.resolve_zoo_checkpoint("zoo:no-such-model")


def test_registry_entries_are_consistent():
    import open_clip

    from robustbench_zs.methods import METHODS

    ids = [e.id for e in registry.entries()]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*", i) for i in ids)
    archs = set(open_clip.list_models())
    for e in registry.entries():
        assert e.method in METHODS or e.note, e.id  # a method not registered here says so in its note
        assert e.arch in archs, e.id
        shipped = all(s.packaged for s in e.sources)  # weights inside the package (the world model)
        if shipped:
            assert e.method == "clip" and e.eps == 0 and e.note and "zsbench world pretrain" in e.note
            assert all(s.packaged_path.is_file() and s.sha256 for s in e.sources), e.id
        else:
            assert e.pretrained in open_clip.list_pretrained_tags_by_model(e.arch), e.id
            assert e.eps > 0
        assert e.sources and e.norm == "linf"
        for s in e.sources:
            assert s.manual or s.packaged or s.http_url.startswith("https://"), s.url
    hub = registry.get_entry("robustvlm-fare2-vit-l-14").sources[0]
    assert hub.http_url == "https://huggingface.co/chs20/fare2-clip/resolve/main/open_clip_pytorch_model.bin"


def test_docs_list_every_entry_and_published_hash():
    text = DOCS.read_text(encoding="utf-8")
    for e in registry.entries():
        assert f"`{e.id}`" in text, e.id
        for s in e.sources:
            if s.sha256:
                assert s.sha256 in text, (e.id, s.file)


# --- the table as data (zoo/data/zoo.json, read through robustbench_zs.resources) ---------------------------------

#: The table as it was when it moved from Python literals to zoo.json: (id, method, arch, eps, number of sources).
ZOO_BEFORE_JSON = [
    ("tecoa-official-vit-b-32", "tecoa", "ViT-B-32", 1, 1),
    ("robustvlm-tecoa2-vit-l-14", "tecoa", "ViT-L-14", 2, 2),
    ("robustvlm-tecoa4-vit-l-14", "tecoa", "ViT-L-14", 4, 2),
    ("robustvlm-fare2-vit-l-14", "fare", "ViT-L-14", 2, 2),
    ("robustvlm-fare4-vit-l-14", "fare", "ViT-L-14", 4, 2),
    ("robustvlm-tecoa1-vit-b-32-openai", "tecoa", "ViT-B-32", 1, 1),
    ("robustvlm-fare1-vit-b-32-openai", "fare", "ViT-B-32", 1, 1),
    ("robustvlm-tecoa4-vit-b-32-openai", "tecoa", "ViT-B-32", 4, 1),
    ("robustvlm-fare4-vit-b-32-openai", "fare", "ViT-B-32", 4, 1),
    ("robustvlm-tecoa4-vit-b-32-laion2b", "tecoa", "ViT-B-32", 4, 2),
    ("robustvlm-fare4-vit-b-32-laion2b", "fare", "ViT-B-32", 4, 2),
    ("robustvlm-tecoa4-vit-b-16-laion2b", "tecoa", "ViT-B-16", 4, 2),
    ("robustvlm-fare4-vit-b-16-laion2b", "fare", "ViT-B-16", 4, 2),
    ("tga-zsr-vit-b-32", "tga_zsr", "ViT-B-32", 1, 1),
    ("zsbench-world", "clip", "zsbench-world", 0, 1),
]


def test_zoo_json_entries_parse_into_the_registry():
    from robustbench_zs.resources import read_json

    raw = read_json(*registry.ZOO_DATA)["entries"]
    parsed = [registry.entry_from_dict(d) for d in raw]
    assert all(isinstance(e, ZooEntry) and all(isinstance(s, Source) for s in e.sources) for e in parsed)
    assert all(isinstance(e.sources, tuple) for e in parsed)
    assert parsed == registry.load_entries()
    # the registry is the file's entries in file order, then the world CLIP built in code
    assert registry.entries()[:-1] == parsed and registry.entries()[-1].id == "zsbench-world"


def test_zoo_json_keeps_the_table_it_replaced():
    got = [(e.id, e.method, e.arch, e.eps, len(e.sources)) for e in registry.entries()]
    assert got == ZOO_BEFORE_JSON
    assert all(type(e.eps) is int for e in registry.entries())  # printed as 4/255, not 4.0/255
    published = {(e.id, s.file): s.sha256 for e in registry.entries() for s in e.sources if s.sha256 and not s.packaged}
    assert published == {
        ("robustvlm-tecoa2-vit-l-14", "open_clip_pytorch_model.bin"): (
            "c10d93237ca654e85b9977b6bb9195ea017e0e87ab15145e67dcf92245bd4af4"
        ),
        ("robustvlm-tecoa4-vit-l-14", "open_clip_pytorch_model.bin"): (
            "7d85c081ffe48ee9a31fa4a025384212bc0d1f27ca6378cc44297cc4f6dfad37"
        ),
        ("robustvlm-fare2-vit-l-14", "open_clip_pytorch_model.bin"): (
            "9fb1f8759c89905809da8ce761a4b90e1c22beaaea7c68f3917647eeb0a230a7"
        ),
        ("robustvlm-fare4-vit-b-16-laion2b", "open_clip_pytorch_model.bin"): (
            "0d432910d3e70ea6fe043662a9fa99472ae87dffef8b1ddd6f5383f96d6dff27"
        ),
    }
    tecoa2 = registry.get_entry("robustvlm-tecoa2-vit-l-14")
    assert [(s.url, s.file, s.format, s.size) for s in tecoa2.sources] == [
        ("hf-hub:chs20/tecoa2-clip", "open_clip_pytorch_model.bin", "open_clip", 1710635909),
        (
            "https://nc.mlcloud.uni-tuebingen.de/index.php/s/5SQzfAbp8JHS3o7/download/tecoa_eps_2.pt",
            "tecoa_eps_2.pt",
            "visual",
            None,
        ),
    ]
    assert tecoa2.license == "MIT" and tecoa2.paper.startswith("Schlarmann, Singh, Croce, Hein: Robust CLIP")
    assert tecoa2.paper.endswith(
        "; method of Mao, Geng, Yang, Wang, Vondrick: Understanding Zero-Shot Adversarial "
        "Robustness for Large-Scale Models, ICLR 2023 (arXiv:2212.07016)"
    )
    laion = registry.get_entry("robustvlm-tecoa4-vit-b-32-laion2b")
    assert [s.file for s in laion.sources] == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert laion.pretrained == "laion2b_s34b_b79k" and laion.sources[0].note == laion.sources[1].note
    (drive,) = registry.get_entry("tga-zsr-vit-b-32").sources
    assert drive.manual and drive.file is None and drive.format == "tecoa_official"
    assert registry.get_entry("tga-zsr-vit-b-32").manual and registry.get_entry("tga-zsr-vit-b-32").license is None
    official = registry.get_entry("tecoa-official-vit-b-32").sources[0]
    assert official.url == "https://cv.cs.columbia.edu/mcz/TeCoA/TeCoAmodel_best.pth.tar"
    assert official.format == "tecoa_official" and official.sha256 is None and not official.manual


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"sources": []}, "non-empty list of sources"),
        ({"colour": "red"}, "unknown field"),
        ({"sources": [{"url": "https://x/y", "file": "y", "format": "open_clip", "md5": "0"}]}, "unknown field"),
        ({"sources": [{"url": "https://x/y", "file": "y", "format": "pickle"}]}, "unknown zoo file format"),
        ({"sources": [{"url": "https://x/y", "file": "y", "format": "visual", "sha256": "ABC"}]}, "64 lower-case hex"),
        ({"sources": [{"url": "https://x/y", "file": None, "format": "visual"}]}, "needs a file name"),
    ],
)
def test_zoo_json_malformed_entry_is_one_line(monkeypatch, entry, message):
    good = _entry_json("robustvlm-fare2-vit-l-14")
    monkeypatch.setattr(registry, "read_json", lambda *a: {"entries": [good, {**good, **entry}]})
    with pytest.raises(ZSBenchError, match=message) as info:
        registry.load_entries()
    assert "zoo/data/zoo.json, entry robustvlm-fare2-vit-l-14:" in str(info.value) and "\n" not in str(info.value)


def _entry_json(zoo_id: str) -> dict:
    """An entry in its zoo.json form (every field written out)."""
    d = dict(registry.get_entry(zoo_id).__dict__)
    return {**d, "sources": [dict(s.__dict__) for s in d["sources"]]}


def test_zoo_json_missing_field_or_entries_is_one_line(monkeypatch):
    good = _entry_json("robustvlm-fare2-vit-l-14")
    assert registry.entry_from_dict(good) == registry.get_entry("robustvlm-fare2-vit-l-14")
    no_arch = {k: v for k, v in good.items() if k != "arch"}
    monkeypatch.setattr(registry, "read_json", lambda *a: {"entries": [no_arch]})
    with pytest.raises(ZSBenchError, match=r"entry robustvlm-fare2-vit-l-14: .*'arch'"):
        registry.load_entries()
    monkeypatch.setattr(registry, "read_json", lambda *a: {"entries": ["robustvlm-fare2-vit-l-14"]})
    with pytest.raises(ZSBenchError, match="entry #0: a zoo entry must be a JSON object"):
        registry.load_entries()
    monkeypatch.setattr(registry, "read_json", lambda *a: [good])
    with pytest.raises(ZSBenchError, match="no list of 'entries'"):
        registry.load_entries()


def test_package_data_errors_are_one_line(tmp_path, monkeypatch):
    from robustbench_zs import resources

    pkg = tmp_path / "zsb_resources_probe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "good.json").write_text('{"a": [1, 2]}', encoding="utf-8")
    (pkg / "bad.json").write_text('{"a": [1, 2}', encoding="utf-8")
    (pkg / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    (pkg / "good.csv").write_text("x,y\n1,2\n3,\n", encoding="utf-8")
    (pkg / "ragged.csv").write_text("x,y\n1,2,3\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "zsb_resources_probe"
    assert resources.read_json(name, "sub/good.json") == {"a": [1, 2]}
    assert resources.read_json(name, "sub/good.json") is resources.read_json(name, "sub/good.json")  # cached
    assert resources.read_csv(name, "good.csv") == ({"x": "1", "y": "2"}, {"x": "3", "y": ""})
    cases = [
        (resources.read_json, "missing.json", r"zsb_resources_probe/missing\.json is missing"),
        (resources.read_json, "bad.json", r"bad\.json is not valid JSON: .* at line 1 column"),
        (resources.read_json, "latin1.json", r"latin1\.json is not UTF-8"),
        (resources.read_csv, "ragged.csv", r"ragged\.csv is not valid CSV"),
        (resources.read_json, "sub", r"sub is missing or unreadable"),
    ]
    for read, file, message in cases:
        with pytest.raises(ZSBenchError, match=message) as info:
            read(name, file)
        assert "\n" not in str(info.value) and str(info.value).endswith("reinstall robustbench_zs"), file
    with pytest.raises(ZSBenchError, match="cannot read package data file"):
        resources.read_json("zsb_no_such_package_here", "x.json")


def test_every_zoo_method_is_registered_tga_zsr_included():
    import robustbench_zs.methods.tga_zsr  # noqa: F401  (registration, whatever methods/__init__ imports)
    from robustbench_zs.methods import METHODS

    assert METHODS.get("tga_zsr").id == "tga_zsr"
    assert all(e.method in METHODS for e in registry.entries()), [e.method for e in registry.entries()]
    assert "not a method of this" not in registry.get_entry("tga-zsr-vit-b-32").note


def test_an_entry_whose_method_is_not_registered_says_what_it_can_be_used_for(capsys, zoo):
    import robustbench_zs.methods.tga_zsr  # noqa: F401  (registration)
    from robustbench_zs.cli import main
    from robustbench_zs.methods import METHODS

    source = Source(url="https://example.org/w.bin", file="w.bin", format="visual")
    zoo(dataclasses.replace(_entry("elsewhere-vit", source), method="not_a_method_here"))
    zoo(dataclasses.replace(_entry("tga-like", source), method="tga_zsr"))
    zoo(_entry("fare-like", source))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    unregistered = sorted({e.method for e in registry.entries() if e.method not in METHODS})
    assert unregistered == ["not_a_method_here"]
    assert not any(line.startswith(("note: tga_zsr ", "note: fare ")) for line in out.splitlines())
    for method in unregistered:
        (note,) = [line for line in out.splitlines() if line.startswith(f"note: {method} is not a registered method")]
        assert "downloaded and verified" in note and "not evaluated under its name" in note
    assert not any(line.startswith("note: tecoa ") for line in out.splitlines())
