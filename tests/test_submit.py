"""``zsbench submit`` and ``zsbench site`` on records of a real run (the tiny model on the world protocol): the
submission's contents and schema, every refusal in one line (hostile and careless input), and the site's pages.

The browser test of the built site is in test_site_browser.py.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from site_world import ARCH, CARD, submit_argv

from robustbench_zs.cli import main
from robustbench_zs.results import RecordStore
from robustbench_zs.submit.package import SCHEMA_PATH, check_submission, schema, schema_errors
from robustbench_zs.submit.protocols import get_protocol, protocol_of
from robustbench_zs.weights import save_checkpoint


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _refused(argv: list[str], capsys) -> str:
    code, out, err = _run(argv, capsys)
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zsbench: error: "), err
    return lines[0]


@pytest.fixture
def world(site_world):
    return site_world


@pytest.fixture
def submitted(site_submissions):
    return site_submissions


def test_the_schema_is_published_and_valid():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    assert SCHEMA_PATH.name == "submission.schema.json" and SCHEMA_PATH.is_file()


def test_a_submission_holds_every_cell_its_records_and_passes_its_schema(world, submitted):
    folders = sorted(p for p in submitted.iterdir() if p.is_dir())
    assert [f.name.split("-world-")[0] for f in folders] == ["clip-zero-shot", "tecoa-tiny-test"]
    for f in folders:
        sub, records = check_submission(f)
        assert schema_errors(sub) == []
        proto = get_protocol("world")
        assert {(r.dataset["id"], proto.cell_of(r).label) for r in records} == {
            (d, c.label) for d in proto.datasets for c in proto.cells
        }
        assert len(records) == 8 * 4 and sub["protocol"]["images_per_dataset"] == 256
        assert (submitted / f"{f.name}.tar.gz").is_file()
        with tarfile.open(submitted / f"{f.name}.tar.gz") as tar:
            assert f"{f.name}/submission.json" in tar.getnames()
    tecoa = json.loads((folders[1] / "submission.json").read_text())
    ck_sha = json.loads((world["ck"] / "meta.json").read_text())["weights_sha256"]
    assert tecoa["checkpoint"] == {
        "sha256": ck_sha,
        "url": "https://example.org/tecoa-tiny.safetensors",
        "verified": "file",
        "pretrained": "random",
    }
    assert tecoa["card"]["architecture"] == ARCH and tecoa["card"]["method_id"] == "tecoa"
    clip = json.loads((folders[0] / "submission.json").read_text())
    assert clip["checkpoint"]["sha256"] is None and clip["checkpoint"]["verified"] == "none"
    # the records are the run's, byte for byte, in a results folder's layout (zsbench leaderboard reads them)
    for e in tecoa["records"]:
        src = next(world["results"].rglob(Path(e["file"]).name))
        assert (folders[1] / e["file"]).read_bytes() == src.read_bytes()


def test_the_same_records_give_the_same_submission_id_and_are_not_overwritten(world, submitted, capsys):
    msg = _refused(submit_argv(world, submitted, "tecoa"), capsys)
    assert "exists" in msg and "--force" in msg
    code, out, _ = _run(submit_argv(world, submitted, "tecoa", "--force"), capsys)
    assert code == 0 and "32 records" in out


def test_a_submission_missing_a_dataset_is_refused(world, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(world["results"], results)
    for f in (results / "records" / "tecoa" / "world-shape").glob("*.json"):
        if '"name": "pgd"' in f.read_text() and '"eps_255": 4' in f.read_text():
            f.unlink()
    argv = submit_argv(world, tmp_path / "out", "tecoa")
    argv[argv.index("--results") + 1] = str(results)
    msg = _refused(argv, capsys)
    assert "miss 1 of the world protocol's 32" in msg and "world-shape pgd-10 eps 4/255" in msg
    assert "zsbench run --preset world --methods tecoa" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _edited_copy(world, tmp_path, method: str, edit) -> Path:
    """A copy of the results in which ``edit(record_dict)`` changed the first PGD eps-1 record of world-colour."""
    results = tmp_path / "results"
    shutil.copytree(world["results"], results)
    for f in sorted((results / "records" / method / "world-colour").glob("*.json")):
        rec = json.loads(f.read_text())
        if rec["attack"]["name"] == "pgd" and rec["attack"]["eps_255"] == 1:
            edit(rec, f)
            return results
    raise AssertionError("no such record")


def _with_results(argv: list[str], results: Path) -> list[str]:
    argv = list(argv)
    argv[argv.index("--results") + 1] = str(results)
    return argv


def test_a_submission_mixing_tiers_is_refused(world, tmp_path, capsys):
    """A fast-tier record beside world-protocol ones: a submission holds one tier."""
    from robustbench_zs.datasets.tiers import manifest

    entry = manifest()["files"]["cifar10"]

    def to_fast(rec, f):
        rec = json.loads(json.dumps(rec))
        rec["dataset"].update(id="cifar10", name="CIFAR-10", indices_sha256=entry["indices_sha256"])
        rec["dataset"]["n_total"] = entry["n_total"]
        rec["attack"] = {"name": "clean"}
        rec["record_key"] = "f" * 64
        (f.parent / "zz-fast-clean.json").write_text(json.dumps(rec))

    results = _edited_copy(world, tmp_path, "tecoa", to_fast)
    msg = _refused(_with_results(submit_argv(world, tmp_path / "out", "tecoa"), results), capsys)
    assert "records mix tiers" in msg and "fast tier" in msg and "zz-fast-clean.json" in msg


def test_a_submission_mixing_profiles_is_refused(world, tmp_path, capsys):
    def other_profile(rec, f):
        rec["profile"]["normalization"] = "imagenet" if rec["profile"]["normalization"] != "imagenet" else "clip"
        f.write_text(json.dumps(rec))

    results = _edited_copy(world, tmp_path, "tecoa", other_profile)
    msg = _refused(_with_results(submit_argv(world, tmp_path / "out", "tecoa"), results), capsys)
    assert "records mix profiles" in msg and "normalization" in msg


@pytest.mark.parametrize("how", ["flipped byte", "another checkpoint", "wrong sha256", "not hex", "meta lies"])
def test_a_broken_or_foreign_checkpoint_hash_is_refused(world, tmp_path, capsys, how):
    ck = tmp_path / "ck"
    shutil.copytree(world["ck"], ck)
    extra: list[str] = ["--checkpoint", str(ck)]
    if how == "flipped byte":
        w = ck / "weights.safetensors"
        data = bytearray(w.read_bytes())
        data[-5] ^= 0x01
        w.write_bytes(bytes(data))
    elif how == "another checkpoint":
        save_checkpoint(ck, {"w": torch.ones(3)}, {"method": "tecoa", "arch": ARCH, "complete": True})
    elif how == "wrong sha256":
        extra = ["--checkpoint-sha256", "ab" * 32]
    elif how == "not hex":
        extra = ["--checkpoint-sha256", "sha256:xyz"]
    else:  # meta.json states another hash than the weights file has
        meta = json.loads((ck / "meta.json").read_text())
        meta["weights_sha256"] = "0" * 64
        (ck / "meta.json").write_text(json.dumps(meta))
    msg = _refused(submit_argv(world, tmp_path / "out", "tecoa", *extra), capsys)
    expect = {
        "flipped byte": "broken checkpoint",
        "another checkpoint": "not the one that was evaluated",
        "wrong sha256": "not the one that was evaluated",
        "not hex": "is not a sha256",
        "meta lies": "broken checkpoint",
    }[how]
    assert expect in msg, msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_checkpoint_hash_given_by_hand_is_accepted_when_right(world, tmp_path, capsys):
    sha = json.loads((world["ck"] / "meta.json").read_text())["weights_sha256"]
    code, out, err = _run(submit_argv(world, tmp_path / "out", "tecoa", "--checkpoint-sha256", sha.upper()), capsys)
    assert code == 0, err
    sub = json.loads(next((tmp_path / "out").glob("*/submission.json")).read_text())
    assert sub["checkpoint"]["verified"] == "hash" and sub["checkpoint"]["sha256"] == sha


@pytest.mark.parametrize(
    "argv_edit, expect",
    [
        (lambda a: a[:-2], "--checkpoint-url"),  # no URL (it is the last flag)
        (lambda a: a[:-1] + ["file:///etc/passwd"], "not a download address"),
        (lambda a: a[:-1] + ["https://example.org/x y"], "not a download address"),
        (lambda a: a + ["--explain", "ok"], "too short"),
        (lambda a: a + ["--protocol", "platinum"], "invalid choice"),
    ],
)
def test_careless_flags_are_one_line(world, tmp_path, capsys, argv_edit, expect):
    argv = argv_edit(submit_argv(world, tmp_path / "out", "tecoa"))
    if expect == "invalid choice":  # argparse's own refusal: exit 2 with its usage line
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and expect in capsys.readouterr().err
        return
    assert expect in _refused(argv, capsys)


def test_a_zero_shot_method_given_a_checkpoint_is_refused(world, tmp_path, capsys):
    argv = submit_argv(world, tmp_path / "out", "clip", "--checkpoint", str(world["ck"]))
    assert "not a checkpoint" in _refused(argv, capsys)


@pytest.mark.parametrize(
    "card, expect",
    [
        ("[1, 2]", "a card is a JSON object"),
        ("{", "not a JSON file"),
        (json.dumps({k: v for k, v in CARD.items() if k != "venue"}), "'venue' is a required property"),
        (json.dumps({**CARD, "test_time_defense": "no"}), "test_time_defense"),
        (json.dumps({**CARD, "name": ""}), "name"),
        (json.dumps({**CARD, "homepage": "x"}), "Additional properties"),
        (json.dumps({**CARD, "architecture": "ViT-L-14"}), "the records evaluate 'zsbench-tiny'"),
        (json.dumps({**CARD, "test_time_defense": True}), "set it to false"),
        ("__template__", "fill in"),
        (json.dumps({**CARD, "code": "javascript:alert(1)"}), "code"),  # never an href that runs script
        (json.dumps({**CARD, "code": 'https://x.org/" onmouseover="alert(1)'}), "code"),
    ],
)
def test_a_bad_card_is_refused_in_one_line(world, tmp_path, capsys, card, expect):
    from robustbench_zs.submit.package import CARD_TEMPLATE

    f = tmp_path / "card.json"
    f.write_text(json.dumps(CARD_TEMPLATE) if card == "__template__" else card)
    argv = submit_argv(world, tmp_path / "out", "tecoa")
    argv[argv.index("--card") + 1] = str(f)
    assert expect in _refused(argv, capsys)


def test_unknown_method_and_missing_flags_are_one_line(world, tmp_path, capsys):
    argv = submit_argv(world, tmp_path / "out", "tecoa")
    argv[argv.index("--method") + 1] = "pmg_aft"
    msg = _refused(argv, capsys)
    assert "no records of method 'pmg_aft'" in msg and "clip, tecoa" in msg
    assert "needs --protocol, --card" in _refused(["submit", "--method", "tecoa"], capsys)


def test_failed_sanity_checks_need_an_explanation(world, tmp_path, capsys):
    """A record whose robust accuracy is above its clean accuracy fails a check: refused without --explain."""

    def robust_above_clean(rec, f):
        rec.setdefault("sanity", {}).setdefault("checks", []).append(
            {"name": "robust_above_clean", "passed": False, "detail": "robust 3 images above clean"}
        )
        rec["sanity"]["flags"] = "⚠ robust>clean"
        f.write_text(json.dumps(rec))

    results = _edited_copy(world, tmp_path, "tecoa", robust_above_clean)
    argv = _with_results(submit_argv(world, tmp_path / "out", "tecoa"), results)
    msg = _refused(argv, capsys)
    assert "1 sanity check failed" in msg and "robust 3 images above clean" in msg and "--explain" in msg
    why = "The tiny model's random weights put it at chance; the check is expected to fail here."
    code, _, err = _run(argv + ["--explain", why], capsys)
    assert code == 0, err
    f = next((tmp_path / "out").glob("*/submission.json"))
    sub = json.loads(f.read_text())
    assert sub["sanity"]["explanation"] == why and len(sub["sanity"]["failed"]) == 1
    # the failure cannot be hidden by editing submission.json: the site reads it from the records
    sub["sanity"] = {"failed": [], "explanation": None}
    f.write_text(json.dumps(sub))
    msg = _refused(["site", "--out", str(tmp_path / "site"), "--submissions", str(tmp_path / "out")], capsys)
    assert "1 sanity check fails without an explanation" in msg and "robust 3 images above clean" in msg


def test_a_tampered_submission_is_refused_by_the_site(world, submitted, tmp_path, capsys):
    subs = tmp_path / "subs"
    shutil.copytree(submitted, subs, ignore=shutil.ignore_patterns("*.tar.gz"))
    folder = next(p for p in subs.iterdir() if p.name.startswith("tecoa"))
    rec = next((folder / "records").rglob("*.json"))
    doc = json.loads(rec.read_text())
    doc["result"]["correct"] = doc["result"]["n"]  # a forged accuracy (and now inconsistent bits)
    rec.write_text(json.dumps(doc))
    msg = _refused(["site", "--out", str(tmp_path / "site"), "--submissions", str(subs)], capsys)
    assert "does not have the sha256 its entry states" in msg
    sub = json.loads((folder / "submission.json").read_text())
    sub["records"][0]["file"] = "records/../../../etc/passwd.json"
    (folder / "submission.json").write_text(json.dumps(sub))
    msg = _refused(["site", "--out", str(tmp_path / "site"), "--submissions", str(subs)], capsys)
    assert "outside the submission" in msg
    assert not (tmp_path / "site").exists()


def test_the_site_shows_submissions_local_records_and_published_numbers(world, submitted, tmp_path, capsys):
    site = tmp_path / "site"
    code, out, err = _run(
        ["site", "--out", str(site), "--submissions", str(submitted), "--results", str(world["results"])], capsys
    )
    assert code == 0, err
    assert "2 models under world from 64 records" in out  # the local records are the submitted ones: not twice
    index = (site / "index.html").read_text()
    assert "TeCoA (tiny test)" in index and "CLIP zero-shot" in index
    assert "Reported by the authors, not re-evaluated" in index and "42.09" in index  # TGA-ZSR's README
    assert "pgd-10 eps 4/255" in index
    # PMG-AFT's robust accuracy as its authors reported it (PGD-10, 31.95) and the lowest found (their AutoAttack)
    assert "31.95" in index and "17.91" in index
    proto = (site / "protocol-world.html").read_text()
    rec_links = sorted(set(__import__("re").findall(r'href="(records/[0-9a-f]{16}\.html)"', proto)))
    assert len(rec_links) == 64
    for link in rec_links:
        assert (site / link).is_file() and (site / link.replace(".html", ".json")).is_file()
    page = (site / rec_links[0]).read_text()
    assert "Wilson 95% interval" in page and "indices sha256" in page
    methods = sorted((site / "methods").glob("*.html"))
    assert len(methods) == 2
    tecoa = next(m for m in methods if "tecoa" in m.name).read_text()
    assert "arXiv:2212.07016" in tecoa and "hashed from the file by zsbench submit" in tecoa
    assert (site / "plots" / "world-robust-vs-eps.svg").is_file()
    assert (site / "plots" / "world-clean-vs-robust-eps4.svg").is_file()
    # every relative link of every page resolves inside the site (it opens from the file system)
    import re

    for html in site.rglob("*.html"):
        for href in re.findall(r'(?:href|src)="([^"#]+)', html.read_text()):
            if href.startswith(("http://", "https://")):
                continue
            assert (html.parent / href).resolve().is_file(), (html, href)
    # a rebuild replaces the site; the same submissions given twice are shown once
    assert main(["site", "--out", str(site), "--submissions", str(submitted), "--submissions", str(submitted)]) == 0
    assert "2 models under world from 64 records" in capsys.readouterr().out
    # a folder that is not a site is never replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    msg = _refused(["site", "--out", str(other), "--submissions", str(submitted)], capsys)
    assert "not a site built by zsbench site" in msg and (other / "thesis.tex").read_text() == "x"


def test_local_records_of_no_protocol_are_named_not_shown(world, tmp_path, capsys):
    results = tmp_path / "r"
    assert main(["run", "--preset", "smoke", "--datasets", "synthetic", "--out", str(results), "--no-progress"]) == 0
    capsys.readouterr()
    code, out, err = _run(["site", "--out", str(tmp_path / "s"), "--results", str(results)], capsys)
    assert code == 2 and "no submission and no local record fits a protocol" in err
    code, out, err = _run(
        ["site", "--out", str(tmp_path / "s"), "--results", str(results), "--results", str(world["results"])], capsys
    )
    assert code == 0, err
    assert "not shown: 3 records of clip fit no protocol (3 on synthetic)" in out


def test_a_checkpoint_renamed_between_runs_is_one_site_entry(world, tmp_path, capsys):
    """Records of one checkpoint computed under two folder names (keys hold its hash, not its name, so the renamed
    copy reused the first ones) make one entry, complete, named after the newest record."""
    results = tmp_path / "r"
    shutil.copytree(world["results"], results)
    renamed = 0
    for path in sorted((results / "records" / "tecoa").rglob("*.json")):
        rec = json.loads(path.read_text())
        if rec["dataset"]["id"] in ("world-colour", "world-shape", "world-size", "world-count"):
            old = rec["model"]["checkpoint_name"]
            rec["model"]["checkpoint_name"] = "tecoa-renamed"
            rec["model"]["label"] = rec["model"]["label"].replace(old, "tecoa-renamed")
            rec["created_utc"] = "2999-01-01T00:00:00+00:00"
            path.write_text(json.dumps(rec))
            renamed += 1
    assert renamed == 16
    code, out, err = _run(["site", "--out", str(tmp_path / "s"), "--results", str(results)], capsys)
    assert code == 0, err
    assert "2 models under world from 64 records" in out, out


def test_protocol_cells_take_only_their_attack_radius_and_images(world):
    records = list(RecordStore(world["results"]).iter_records())
    found = [protocol_of(r) for r in records]
    assert all(f is not None and f[0].name == "world" for f in found)
    r = records[0]
    other = type(r).from_json({**r.to_json(), "attack": {**r.attack, "precision": "fp16"}})
    assert get_protocol("world").cell_of(other) is None or r.is_clean


def test_the_readmes_submission_commands_are_valid_command_lines():
    """Each command of the README's "Submitting a method" block parses with today's flags (the flow itself runs
    in the tests above)."""
    import re
    import shlex

    from robustbench_zs.cli.main import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Submitting a method", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [line.split("#")[0].split(">")[0].strip() for line in block.splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands] == [["zsbench", "submit"]] * 2 + [["zsbench", "site"]]
    for c in commands:
        args = build_parser().parse_args(shlex.split(c)[1:])
        assert args.handler is not None


def test_the_site_escapes_what_a_card_says(site_world, tmp_path, capsys):
    """A card is the submitter's text: markup in it is shown as text, never run."""
    hostile = {**CARD, "name": "<script>alert(1)</script>", "notes": "<img src=x onerror=alert(2)>"}
    card = tmp_path / "card.json"
    card.write_text(json.dumps(hostile))
    argv = submit_argv(site_world, tmp_path / "subs", "tecoa")
    argv[argv.index("--card") + 1] = str(card)
    assert main(argv) == 0
    assert main(["site", "--out", str(tmp_path / "site"), "--submissions", str(tmp_path / "subs")]) == 0
    capsys.readouterr()
    pages = [p.read_text() for p in (tmp_path / "site").rglob("*.html")]
    assert not any("<script>alert" in p or "<img src=x" in p for p in pages)
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in p for p in pages)
    assert any("&lt;img src=x onerror=alert(2)&gt;" in p for p in pages)


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda s: s["records"].pop(), "the records miss 1 cell of"),
        (lambda s: s["records"].append(dict(s["records"][0])), "1 cell holds two records"),
        (lambda s: s["checkpoint"].update(sha256="ab" * 32), "not all computed with the checkpoint it states"),
        (lambda s: s["card"].update(architecture="ViT-B-32"), "card's architecture"),
    ],
)
def test_a_submission_edited_by_hand_is_refused_by_the_site(submitted, tmp_path, capsys, edit, expect):
    """submission.json is not hashed: what submit checked is checked again from the records."""
    subs = tmp_path / "subs"
    shutil.copytree(submitted, subs, ignore=shutil.ignore_patterns("*.tar.gz", "clip-*"))
    f = next(subs.glob("tecoa-*/submission.json"))
    sub = json.loads(f.read_text())
    edit(sub)
    f.write_text(json.dumps(sub))
    msg = _refused(["site", "--out", str(tmp_path / "site"), "--submissions", str(subs)], capsys)
    assert expect in msg
