"""From the official code's PMG-AFT training step to this package's, one change at a time: FLOPs per image and
step time of each rung, measured in one run on one batch (the rungs of ``robustbench_zs.bench.naive.FIXES``).

    python benchmarks/pmg_aft_ladder.py [--arch ViT-B-32] [--batch-size 32] [--device cpu] [--steps 1]
        [--out benchmarks/results/ladder-cpu-ViT-B-32-b32-fp32.json]

Rungs, each adding one change to the one before:

0. naive: the official code's way (prompts re-encoded at every forward, nothing frozen, full backward in the attack);
1. + text_once: the class prompts encoded once (this package's cached head);
2. + frozen_no_grad: the pre-trained model under ``no_grad``, only the trained image tower requires gradients;
3. + attack_input_grad: the attack's backward into the perturbation only (``autograd.grad``);
4. the engine: ``robustbench_zs.train.engine.step_loss`` + ``apply_update`` with separate clean and adversarial
   forwards (the CPU default), and 5. the same with one joint forward.

Every rung computes the same loss on the same batch (checked here: the first losses are printed). Nothing here is
a test: the times depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tabulate import tabulate

from robustbench_zs.bench import measure
from robustbench_zs.bench.naive import FIXES, NaiveTraining
from robustbench_zs.bench.runner import Bench, BenchConfig, random_batch
from robustbench_zs.distributed import DistEnv
from robustbench_zs.models import build_text_head
from robustbench_zs.train.engine import _optimizer, apply_update, prepare_models, step_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per rung, after one counted (untimed) step")
    ap.add_argument("--out", help="JSON file to write")
    args = ap.parse_args()
    bench = Bench(BenchConfig(arch=args.arch, batch_size=args.batch_size, device=args.device, precision="fp32"))
    device, method, recipe, b = bench.device, bench.method, bench.recipe, args.batch_size
    x, y, seeds = random_batch(b, bench.base.image_size, len(bench.names), 0, device)

    def naive_rung(fixes: tuple[str, ...]):
        naive = NaiveTraining(method, bench.base.model, bench.prompt_tokens(), recipe, bench.knobs, bench.base.image_size,
                              "fp32", device, fixes)  # fmt: skip
        return lambda: float(naive.step(x, y, seeds))

    def engine_rung(joint: bool):
        loaded = bench.fresh_model()
        head, _ = build_text_head(loaded.model, loaded.tokenizer, bench.names, bench.templates, None)
        models = prepare_models(method, loaded, bench.knobs, head, device)
        models.model.train()
        opt = _optimizer(models.trainable, recipe)
        env = DistEnv(0, 1, 0, device)

        def step() -> float:
            scaled, _ = step_loss(method, models, x, y, seeds, recipe, "fp32", {"global_batch": b}, joint)
            loss = float(scaled.detach())
            apply_update(scaled, models.trainable, opt, None, env)
            return loss

        return step

    # each rung is built when its turn comes, so only one rung's copies of the model are alive at a time
    rungs = [("naive", lambda: naive_rung(()))]
    rungs += [(f"+ {fix}", lambda i=i: naive_rung(FIXES[: i + 1])) for i, fix in enumerate(FIXES)]
    rungs += [("engine (separate forwards)", lambda: engine_rung(False))]
    rungs += [("engine, joint forward", lambda: engine_rung(True))]
    peak = measure.MatmulProbe(device, torch.float32)
    peaks = [peak.sample()]
    rows, records = [], []
    for name, build in rungs:
        step = build()
        first: list[float] = []
        flops, _ = measure.count_flops(lambda step=step, first=first: first.append(step()))
        seconds = [measure.timed(step, device) for _ in range(args.steps)]
        peaks.append(peak.sample())
        median = sorted(seconds)[len(seconds) // 2]
        del step
        records.append({"rung": name, "flops_per_image": flops / b, "seconds": seconds, "loss_first_step": first[0]})
        rows.append([name, f"{flops / b / 1e9:.1f}", f"{median:.2f}", f"{b / median:.3f}", f"{first[0]:.6f}"])
        print(f"{name}: {flops / b / 1e9:.1f} GFLOP/image, {median:.2f} s/step", flush=True)
    medians = [sorted(r["seconds"])[len(r["seconds"]) // 2] for r in records]
    for row, median in zip(rows, medians, strict=True):
        row.append(f"{medians[0] / median:.2f}x")
    print(tabulate(rows, headers=["rung", "GFLOP/image", "s/step", "images/s", "first loss", "vs naive"]))
    if args.out:
        report = {
            "benchmark": "benchmarks/pmg_aft_ladder.py",
            "machine": measure.describe_machine(device),
            "settings": {**vars(args), "image_size": list(bench.base.image_size), "classes": len(bench.names)},
            "peak_fp32_samples": peaks,
            "rungs": records,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
