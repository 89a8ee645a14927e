"""``zsbench models list|download|verify``: the checkpoint zoo on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from ..errors import ZSBenchError
from ..methods import METHODS
from ..zoo import registry, store


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``zsbench models`` on the CLI's subparsers."""
    mp = sub.add_parser(
        "models",
        help="the checkpoint zoo: list, download and verify published robust CLIP checkpoints",
        description="Published robust CLIP image encoders, stored under <models>/zoo/<id>/ and evaluated with "
        "--checkpoint METHOD=zoo:ID.",
    )
    msub = mp.add_subparsers(dest="action", required=True, parser_class=type(mp))
    models_dir = {"help": "models folder; zoo files go to <models-dir>/zoo/<id>/ (default $ZSBENCH_MODELS or ./models)"}

    ls = msub.add_parser("list", help="the zoo's entries and which are downloaded / verified")
    ls.add_argument("--method", help="only this method id (tecoa, fare, ...)")
    ls.add_argument("--arch", help="only this open_clip architecture (ViT-L-14, ViT-B-32, ...)")
    ls.add_argument("--models-dir", **models_dir)

    dl = msub.add_parser("download", help="fetch entries (resumable; sha256-checked where a hash is published)")
    dl.add_argument("ids", metavar="ID[,ID]", help="comma-separated zoo ids (see zsbench models list)")
    dl.add_argument("--models-dir", **models_dir)
    dl.add_argument(
        "--mirror",
        help=f"fetch every file from MIRROR/<id>/<file> instead of its source (default ${store.MIRROR_ENV} if set)",
    )
    dl.add_argument("--force", action="store_true", help="download again even if a copy is stored")

    vf = msub.add_parser("verify", help="recompute the sha256, load the file safely and check it fits its architecture")
    vf.add_argument("id", metavar="ID", help="a zoo id")
    vf.add_argument("--file", help="a copy downloaded by hand; when it passes it is stored as the entry's copy")
    vf.add_argument("--models-dir", **models_dir)
    vf.add_argument("--no-install", action="store_true", help="with --file: only check it, store nothing")
    vf.add_argument(
        "--no-arch-check", action="store_true", help="skip matching the keys and shapes against the architecture"
    )
    mp.set_defaults(handler=_main)
    return mp


def _main(args: argparse.Namespace) -> int:
    return {"list": _list, "download": _download, "verify": _verify}[args.action](args)


def _eps(value: float) -> str:
    return f"{value:g}/255"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _local(entry: registry.ZooEntry, state: store.LocalState) -> str:
    if state.status == "partial":
        return f"partial ({_size(state.partial_bytes)})"
    if state.status == "missing":
        return "manual download" if entry.manual else "-"
    return state.status


def _list(args: argparse.Namespace) -> int:

    rows = []
    for e in registry.entries():
        if args.method and e.method != args.method:
            continue
        if args.arch and e.arch.lower() != args.arch.lower():
            continue
        state = store.local_state(e, args.models_dir)
        published = "published" if e.published_sha256 else "not published"
        rows.append([e.id, e.method, e.arch, e.pretrained, _eps(e.eps), e.train_data, e.sources[0].label, published])
        rows[-1].append(_local(e, state))
    if not rows:
        raise ZSBenchError("no zoo entry matches --method/--arch; `zsbench models list` shows them all")
    headers = ["id", "method", "arch", "fine-tuned from", "eps", "trained on", "source", "sha256", "local"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    print(f"\nzoo folder: {store.zoo_root(args.models_dir)}; evaluate one with --checkpoint METHOD=zoo:ID")
    listed = [e for e in registry.entries() if any(row[0] == e.id for row in rows)]
    for method in sorted({e.method for e in listed if e.method not in METHODS}):
        ids = ", ".join(e.id for e in listed if e.method == method)
        print(
            f"note: {method} is not a registered method, so {ids} can be downloaded and verified (zsbench models "
            f"download|verify) but not evaluated under its name; `zsbench list methods` shows what runs"
        )
    return 0


def _download(args: argparse.Namespace) -> int:
    ids = [i.strip() for i in args.ids.split(",") if i.strip()]
    if not ids:
        raise ZSBenchError("give one or more zoo ids, comma-separated (see zsbench models list)")
    for zoo_id in ids:
        registry.get_entry(zoo_id)  # unknown ids fail before anything is fetched
    for zoo_id in ids:
        store.download(zoo_id, args.models_dir, mirror=args.mirror, force=args.force)
        print(f"{zoo_id}: check that it loads safely with `zsbench models verify {zoo_id}`")
    return 0


def _verify(args: argparse.Namespace) -> int:
    if args.no_install and not args.file:
        raise ZSBenchError("--no-install goes with --file")
    rep = store.verify(
        args.id,
        Path(args.file) if args.file else None,
        args.models_dir,
        install=not args.no_install,
        arch_check=not args.no_arch_check,
    )
    fmt = rep["format"]
    declared = "" if fmt == rep["declared_format"] else f" (the zoo lists {rep['declared_format']})"
    ignored = f", {rep['ignored_keys']} text-tower keys ignored" if rep["ignored_keys"] else ""
    print(f"{rep['id']}: {rep['path']}")
    print(f"  size     {rep['size']} bytes ({_size(rep['size'])})")
    print(f"  sha256   {rep['sha256']}: {rep['verification']}")
    print(f"  format   {fmt}{declared}; {rep['num_tensors']} image-encoder tensors{ignored}")
    print(f"  read by  {rep['reader']}: no code from the file ran")
    arch = f"every key and shape of {rep['arch']}'s image tower matches" if rep["arch_checked"] else "not checked"
    print(f"  arch     {arch}")
    if rep["installed"]:
        print(f"  stored   as {rep['installed']}; evaluate it with --checkpoint METHOD=zoo:{rep['id']}")
    return 0
