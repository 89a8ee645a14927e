"""The command line end to end, and every bad input answered with one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pandas as pd
import pytest
import torch
from dataset_fixtures import write_cifar10, write_cifar100, write_tinyimagenet

from robustbench_zs.cli import main

TINY_ARGS = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]


def test_console_script_is_declared():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "zsbench"]
    assert ep.value == "robustbench_zs.cli:main"


def test_smoke_preset_in_a_fresh_process(tmp_path):
    """What the README's quickstart runs: offline, tiny model, generated data, records and a leaderboard."""
    env = {**os.environ, "ZSBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "robustbench_zs", "run", "--preset", "smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    board = tmp_path / "results" / "smoke" / "leaderboard.md"
    assert board.is_file() and str(board.relative_to(tmp_path)) in proc.stdout
    text = board.read_text()
    assert "## Clean" in text and "## PGD-10 L∞ ε=1/255" in text and "## PGD-10 L∞ ε=4/255" in text
    assert len(list((tmp_path / "results" / "smoke" / "records").rglob("*.json"))) == 3


def test_run_on_the_three_real_layouts(tmp_path, capsys):
    data = tmp_path / "data"
    write_cifar10(data, n_test=24)
    write_cifar100(data, n_test=24)
    write_tinyimagenet(data, n_val_per_class=1)
    out = tmp_path / "out"
    argv = ["run", "--methods", "clip", "--datasets", "cifar10,cifar100,tinyimagenet", "--attack", "pgd"]
    argv += ["--eps", "1,2", "--steps", "2", "--n", "20", "--data-root", str(data), "--out", str(out), *TINY_ARGS]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "9 written" in stdout and "leaderboard.md" in stdout
    recs = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    assert {r["dataset"]["id"] for r in recs} == {"cifar10", "cifar100", "tinyimagenet"}
    assert all(r["dataset"]["n"] == 20 for r in recs)
    assert {r["dataset"]["n_total"] for r in recs} == {24, 200}
    wide = pd.read_csv(out / "leaderboard.csv")
    assert set(wide["table"]) == {"Clean", "PGD-2 L∞ ε=1/255", "PGD-2 L∞ ε=2/255"}
    assert {"CIFAR-10", "CIFAR-100", "TinyImageNet", "Average"} <= set(wide.columns)
    # the same command again computes nothing
    assert main(argv) == 0
    assert "0 written, 9 already there" in capsys.readouterr().out
    assert main(["leaderboard", "--out", str(out)]) == 0
    assert "## PGD-2 L∞ ε=2/255" in capsys.readouterr().out


def test_clean_only_and_l2(tmp_path):
    out = tmp_path / "out"
    base = ["run", "--datasets", "synthetic", "--n", "16", "--out", str(out), *TINY_ARGS]
    assert main([*base, "--attack", "none"]) == 0
    assert len(list((out / "records").rglob("*.json"))) == 1
    assert main([*base, "--norm", "l2", "--eps", "32", "--steps", "2"]) == 0
    (l2,) = [json.loads(p.read_text()) for p in (out / "records").rglob("pgd-l2*.json")]
    assert l2["attack"]["norm"] == "l2" and l2["attack"]["step_size"] == pytest.approx(2.5 * (32 / 255) / 2)


@pytest.mark.parametrize("what,expected", [("methods", "clip"), ("datasets", "tinyimagenet"), ("attacks", "pgd")])
def test_list(capsys, what, expected):
    assert main(["list", what]) == 0
    assert expected in capsys.readouterr().out


def _bad(tmp_path):
    data = tmp_path / "data"
    (data / "tiny-imagenet-200").mkdir(parents=True)
    afile = tmp_path / "a-file"
    afile.write_text("")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04garbage")
    text = tmp_path / "text.pt"
    text.write_text("hi\n")
    base = ["run", "--n", "8", "--out", str(tmp_path / "out"), *TINY_ARGS]
    return {
        "unknown method": ([*base, "--methods", "nope"], "known methods: clip"),
        "unknown dataset": ([*base, "--datasets", "nope"], "known datasets: cifar10"),
        "unknown attack": ([*base, "--datasets", "synthetic", "--attack", "nope"], "known attacks: pgd"),
        "negative eps": ([*base, "--datasets", "synthetic", "--eps", "-1"], "negative"),
        "eps over 255": ([*base, "--datasets", "synthetic", "--eps", "1,300"], "over 255"),
        "eps not a number": ([*base, "--datasets", "synthetic", "--eps", "one"], "not a number"),
        "eps nan": ([*base, "--datasets", "synthetic", "--eps", "nan"], "not finite"),
        "missing data root": (
            [*base, "--datasets", "cifar10", "--data-root", str(tmp_path / "missing")],
            "cifar-10-batches-py",
        ),
        "wrong layout": ([*base, "--datasets", "tinyimagenet", "--data-root", str(data)], "wnids.txt"),
        "unwritable out": (
            ["run", "--datasets", "synthetic", "--out", str(afile / "sub"), *TINY_ARGS],
            "cannot write to output directory",
        ),
        "zero n": ([*base, "--datasets", "synthetic", "--n", "0"], "--n 0 must be at least 1"),
        "bad steps": ([*base, "--datasets", "synthetic", "--steps", "ten"], "not an integer"),
        "unknown tag": (
            ["run", "--datasets", "synthetic", "--arch", "zsbench-tiny", "--pretrained", "nope", "--device", "cpu"],
            "neither a pretrained tag",
        ),
        "unknown arch": (
            ["run", "--datasets", "synthetic", "--arch", "ViT-Q-99", "--device", "cpu"],
            "unknown architecture",
        ),
        "bad choice": (["run", "--norm", "l3"], "invalid choice"),
        "no records": (["leaderboard", "--out", str(tmp_path / "empty")], "no records under"),
        "empty eps item": ([*base, "--datasets", "synthetic", "--eps", "1,,2"], "--eps '' is not a number"),
        "eps underscore": ([*base, "--datasets", "synthetic", "--eps", "1_0"], "not a number"),
        "bad step size": ([*base, "--datasets", "synthetic", "--step-size", "abc"], "--step-size 'abc'"),
        "two step sizes": ([*base, "--datasets", "synthetic", "--step-size", "1,2"], "takes one value"),
        "eps without attack": ([*base, "--datasets", "synthetic", "--attack", "none", "--eps", "2"], "no effect"),
        "huge seed": ([*base, "--datasets", "synthetic", "--seed", "99999999999999999999"], "at most 2147483647"),
        "garbage checkpoint": (
            [
                "run",
                "--datasets",
                "synthetic",
                "--arch",
                "zsbench-tiny",
                "--pretrained",
                str(garbage),
                "--device",
                "cpu",
            ],
            "expected an open_clip checkpoint",
        ),
        "text checkpoint": (
            ["run", "--datasets", "synthetic", "--arch", "zsbench-tiny", "--pretrained", str(text), "--device", "cpu"],
            "expected an open_clip checkpoint",
        ),
    }


CASE_NAMES = [
    "unknown method",
    "unknown dataset",
    "unknown attack",
    "negative eps",
    "eps over 255",
    "eps not a number",
    "eps nan",
    "missing data root",
    "wrong layout",
    "unwritable out",
    "zero n",
    "bad steps",
    "unknown tag",
    "unknown arch",
    "bad choice",
    "no records",
    "empty eps item",
    "eps underscore",
    "bad step size",
    "two step sizes",
    "eps without attack",
    "huge seed",
    "garbage checkpoint",
    "text checkpoint",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    argv, needle = _bad(tmp_path)[case]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert err.startswith("zsbench")


def test_missing_data_root_names_layout_and_the_command_that_gets_it(tmp_path, capsys):
    assert main(["run", "--datasets", "cifar100", "--data-root", str(tmp_path), *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/cifar-100-python/{{train,test,meta}}" in err and "<data-root>" not in err
    assert err.strip().endswith(f"get it with: zsbench datasets download cifar100 --data-root {tmp_path}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu(tmp_path, capsys):
    argv = [
        "run",
        "--datasets",
        "synthetic",
        "--out",
        str(tmp_path),
        "--arch",
        "zsbench-tiny",
        "--pretrained",
        "random",
    ]
    assert main([*argv, "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_bad_input_through_the_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "robustbench_zs", "run", "--methods", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "known methods" in proc.stderr


@pytest.mark.parametrize("stop_at", [2, 3])
def test_interrupted_run_keeps_finished_records(tmp_path, monkeypatch, capsys, stop_at):
    """Records are written per threat: an interruption loses only the evaluation in progress."""
    from robustbench_zs.engine import runner

    write_cifar10(tmp_path / "data", n_test=16)
    real = runner.evaluate
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "evaluate", flaky)
    out = tmp_path / "out"
    argv = ["run", "--datasets", "synthetic,cifar10", "--n", "16", "--eps", "1", "--steps", "1"]
    argv += ["--data-root", str(tmp_path / "data"), "--out", str(out), *TINY_ARGS]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    kept = sorted(p.relative_to(out / "records") for p in (out / "records").rglob("*.json"))
    assert len(kept) == stop_at - 1 and all(p.parts[1] == "synthetic" for p in kept)
    assert "Synthetic" in (out / "leaderboard.md").read_text()
    monkeypatch.setattr(runner, "evaluate", real)
    assert main(argv) == 0
    assert f"{5 - stop_at} written, {stop_at - 1} already there" in capsys.readouterr().out


def test_unwritable_text_head_cache(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("ZSBENCH_CACHE", str(blocker))
    assert main(["run", "--datasets", "synthetic", "--out", str(tmp_path / "out"), *TINY_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ZSBENCH_CACHE" in err


def test_corrupt_image_in_a_loader_worker_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    write_tinyimagenet(data)
    bad = data / "tiny-imagenet-200" / "val" / "images" / "val_5.JPEG"
    bad.write_bytes(b"garbage")
    argv = ["run", "--datasets", "tinyimagenet", "--data-root", str(data), "--out", str(tmp_path / "out")]
    assert main([*argv, "--attack", "none", "--workers", "1", *TINY_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot decode image" in err and "val_5.JPEG" in err


def test_datasets_check_reports_each_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    write_cifar10(data, n_test=8)
    (data / "cifar-100-python").mkdir()
    assert main(["datasets", "check", "--data-root", str(data)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows["cifar10"].split()[1:4] == ["found", "8", "10"]
    assert (
        rows["cifar100"].split()[1:3] == ["wrong", "layout"]
        and "cifar-100-python/{train,test,meta}" in rows["cifar100"]
    )
    assert (
        rows["tinyimagenet"].split()[1] == "missing"
        and "zsbench datasets download tinyimagenet" in rows["tinyimagenet"]
    )
    assert rows["synthetic"].split()[1] == "found"


EPS_SPELLINGS = [
    ("1,4", [1.0, 4.0]),
    ("1/255,4/255", [1.0, 4.0]),
    ("4/255, 1", [1.0, 4.0]),
    ("0.5,1", [0.5, 1.0]),  # not every value below 1: units of 1/255
    ("0.5/255", [0.5]),
    ("8/255", [8.0]),
    ("0", [0.0]),
]


@pytest.mark.parametrize("value,units", EPS_SPELLINGS)
def test_eps_as_fractions_or_units_of_1_255_are_the_same_radii(value, units):
    from robustbench_zs.cli.args import parse_eps

    assert [round(e * 255, 9) for e in parse_eps(value)] == units


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--eps", "0.03"], "--eps 0.03 is ambiguous"),
        (["--eps", "0.031,0.0157"], "write --eps 8/255 (or 8)"),
        (["--eps", "0.5"], "--eps 0.5/255 if you mean 0.5/255"),
        (["--eps", "2/0"], "--eps 2/0 divides by 0"),
        (["--eps", "256/255"], "over 255/255"),
        (["--eps", "1/2/3"], "not a number or a fraction"),
        (["--step-size", "0.25"], "--step-size 0.25 is ambiguous"),
    ],
)
def test_an_eps_that_reads_as_a_fraction_is_refused_with_both_spellings(tmp_path, capsys, argv, needle):
    code = main(["run", "--preset", "smoke", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
    if "ambiguous" in needle:
        assert "/255" in err and "units of 1/255" in err  # both spellings shown


def test_train_takes_the_same_eps_spellings(tmp_path, monkeypatch):
    import robustbench_zs.cli.train as train_cli

    seen = {}
    monkeypatch.setattr(train_cli, "train", lambda cfg: seen.setdefault("recipe", cfg.recipe))
    base = ["train", "--method", "tecoa", *TINY_ARGS[:4], "--out", str(tmp_path), "--data-root", str(tmp_path)]
    assert main([*base, "--train-eps", "4/255", "--train-step-size", "1/255"]) == 0
    assert seen["recipe"]["train_eps_255"] == 4.0 and seen["recipe"]["train_step_size_255"] == 1.0
