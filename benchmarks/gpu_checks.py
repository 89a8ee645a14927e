"""Issue 19's GPU checks as one prepared command, for a session that is lent a GPU machine.

    python benchmarks/gpu_checks.py --out DIR [--device cuda] [--quick]

It runs, each as its own ``zsbench`` process (so one that fails leaves the others' results):

1. ``zsbench bench``: the PMG-AFT training step at batch 256 in bf16 (ViT-B/32, 224 px, random weights) and the
   PGD-10 evaluation at the largest of 1024, 512, 256 images per batch that fits in the GPU's memory;
2. the world model's 8 tasks under PGD-10 at 1, 2, 4/255 in fp32 and in bf16, compared verdict by verdict
   (``benchmarks/precision_verdicts.py``);
3. with two or more GPUs, the same fp32 world evaluation under ``torchrun --nproc_per_node 2``, whose records must
   equal the single process's in every result field, per-image bits included;

and writes ``DIR/gpu_checks.json`` with each figure against its target:

- a PMG-AFT TinyImageNet epoch (100,000 training images, the paper's recipe) in at most 40 s
  (epoch seconds = 100,000 / the measured training images per second);
- PGD-10 evaluation at 1,500 images/s or more;
- bf16 attack verdicts equal to fp32 within the fp32 Wilson interval, on every pair.

``--quick`` shrinks everything (a tiny model, 2 timed steps, 64-image evaluation batches) to check the script
itself on a CPU: its figures are not the targets' and it says so. On the GPU machine the package runs from the
source tree (PYTHONPATH), with open_clip and the other missing dependencies carried as wheels (see the README's
"Performance" section).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import precision_verdicts  # noqa: E402  (beside this file)

TINYIMAGENET_TRAIN = 100_000
TARGETS = {"epoch_s_max": 40.0, "eval_images_per_s_min": 1500.0}


def zsbench(*args: str, log: Path, torchrun: int = 0) -> tuple[int, float]:
    """Run one zsbench command from the source tree; its output goes to ``log`` and is echoed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env["PYTHONUNBUFFERED"] = "1"
    head = [sys.executable, "-m"]
    if torchrun:
        head += ["torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", "-m"]
    cmd = [*head, "robustbench_zs", *args]
    print("$", " ".join(cmd[2:] if not torchrun else ["torchrun", *cmd[3:]]), flush=True)
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - t0
    print(f"  exit {proc.returncode} after {seconds:.1f} s", flush=True)
    return proc.returncode, seconds


def bench(out: Path, device: str, quick: bool, log: Path) -> dict:
    sizes = [64] if quick else [1024, 512, 256]
    base = ["bench", "--device", device, "--no-naive", "--precision", "bf16"]
    quick_args = ["--arch", "zsbench-tiny", "--batch-size", "16", "--steps", "2", "--peak-size", "256"]
    base += quick_args if quick else ["--batch-size", "256"]
    base += [] if quick else ["--steps", "10"]
    tried = []
    for eb in sizes:
        path = out / f"bench-{device}-b{16 if quick else 256}-e{eb}.json"
        rc, seconds = zsbench(*base, "--eval-batch-size", str(eb), "--out", str(path), log=log)
        tried.append({"eval_batch_size": eb, "exit": rc, "wall_s": round(seconds, 1)})
        if rc == 0 and path.is_file():
            report = json.loads(path.read_text(encoding="utf-8"))
            res = report["results"]
            train_ips = res["train"]["ours"]["images_per_second"]
            eval_ips = res["eval"]["ours"]["images_per_second"]
            epoch_s = TINYIMAGENET_TRAIN / train_ips
            return {
                "report": path.name,
                "device": report["machine"].get("device"),
                "tried": tried,
                "train_batch_size": report["settings"]["batch_size"],
                "eval_batch_size": eb,
                "train_images_per_s": train_ips,
                "train_fraction_of_peak": res["train"]["ours"].get("fraction_of_peak"),
                "tinyimagenet_epoch_s": round(epoch_s, 1),
                "epoch_target_met": None if quick else epoch_s <= TARGETS["epoch_s_max"],
                "eval_images_per_s": eval_ips,
                "eval_target_met": None if quick else eval_ips >= TARGETS["eval_images_per_s_min"],
            }
    return {"tried": tried, "error": f"every evaluation batch failed; see {log.name}"}


def world(out: Path, device: str, quick: bool, log: Path) -> dict:
    runs = out / "world"
    extra = ["--datasets", "world-colour,world-shape", "--images", "64"] if quick else []
    common = ["run", "--preset", "world", "--device", device, "--no-progress", *extra]
    rc32, s32 = zsbench(*common, "--out", str(runs), log=log)
    rc16, s16 = zsbench(*common, "--attack-precision", "bf16", "--out", str(runs), log=log)
    if rc32 or rc16:
        return {"error": f"world runs exited {rc32} (fp32) and {rc16} (bf16); see {log.name}"}
    rows = precision_verdicts.compare(runs)
    (out / "precision_verdicts.md").write_text(precision_verdicts.table(rows) + "\n", encoding="utf-8")
    images = sum(r["n"] for r in rows)
    same = sum(round(r["agreement"] * r["n"]) for r in rows)
    return {
        "fp32_wall_s": round(s32, 1),
        "bf16_wall_s": round(s16, 1),
        "pairs": len(rows),
        "pairs_inside_fp32_ci": sum(r["bf16_inside_fp32_ci"] for r in rows),
        "verdicts_equal": f"{same}/{images}",
        "target_met": bool(rows) and all(r["bf16_inside_fp32_ci"] for r in rows),
        "rows": rows,
    }


def sharded(out: Path, device: str, quick: bool, log: Path) -> dict:
    """The fp32 world evaluation again under torchrun with 2 processes; its records against the single run's."""
    runs = out / "world-2proc"
    extra = ["--datasets", "world-colour,world-shape", "--images", "64"] if quick else []
    rc, seconds = zsbench(
        "run", "--preset", "world", "--device", device, "--no-progress", *extra, "--out", str(runs), log=log, torchrun=2
    )
    if rc:
        return {"error": f"torchrun exited {rc}; see {log.name}"}
    one = {p.relative_to(out / "world"): p for p in (out / "world" / "records").rglob("*.json")}
    two = {p.relative_to(runs): p for p in (runs / "records").rglob("*.json")}
    differ = []
    for rel, p in two.items():
        q = one.get(rel)
        a = json.loads(p.read_text(encoding="utf-8"))
        b = json.loads(q.read_text(encoding="utf-8")) if q else None
        if b is None or a["result"] != b["result"] or a["record_key"] != b["record_key"]:
            differ.append(str(rel))
    return {"wall_s": round(seconds, 1), "records": len(two), "differ": differ, "identical": not differ and bool(two)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSONs, the records and the log")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu with --quick")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few images: checks the script, not GPUs")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_checks.log"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here; pass --device cpu --quick to check the script", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    summary = {
        "targets": TARGETS,
        "quick": args.quick,
        "device": torch.cuda.get_device_name(0) if gpus else "cpu",
        "gpus": gpus,
        "torch": torch.__version__,
    }
    summary["bench"] = bench(args.out, args.device, args.quick, log)
    summary["precision"] = world(args.out, args.device, args.quick, log)
    if gpus >= 2 or (args.quick and args.device == "cpu"):
        summary["sharded_2"] = sharded(args.out, args.device, args.quick, log)
    else:
        summary["sharded_2"] = {"skipped": f"{gpus} GPU(s) on this machine"}
    (args.out / "gpu_checks.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "precision"}, indent=1))
    pr = summary["precision"]
    print("precision:", {k: v for k, v in pr.items() if k != "rows"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
