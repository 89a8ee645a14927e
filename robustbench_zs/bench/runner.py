"""``zsbench bench``: training and PGD-evaluation throughput of this package's code, its FLOPs, the share of the
machine's matmul peak it reaches, and how much faster it is than the official code's way of computing the same.

Everything runs in one process on one batch of random images (random labels among TinyImageNet's 200 classes, the
recipe's training set, with the paper's prompt) and, by default, random weights, so nothing is downloaded:

* **training** (``--method``, default ``pmg_aft``): one optimizer step of the real engine,
  :func:`robustbench_zs.train.engine.step_loss` then :func:`~robustbench_zs.train.engine.apply_update`: the
  recipe's training PGD (2 steps of 1/255 at eps 1/255 for PMG-AFT), the method's loss, backward, SGD;
* **evaluation**: PGD-10 at eps 1/255 (step 1/255), the registered ``pgd`` attack on the
  :class:`~robustbench_zs.models.ZeroShotClassifier` as ``zsbench run`` calls it (the timed attack only);
* **naive** (:mod:`robustbench_zs.bench.naive`): the same two computations as the official code runs them;
* **peak**: a large square ``torch.mm`` in fp32 and bf16, sampled before, between and after the phases (on a
  shared machine other work slows both alike); its median is the peak the FLOP rates are divided by.

Each phase runs its step once under a FLOP counter (untimed; it also warms up), ``warmup`` more times untimed,
then ``steps`` times timed; the median step time gives images/s and FLOP/s.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from torch import nn

from ..atomic import write_text
from ..attacks import ATTACKS, Threat
from ..attacks.core import eval_mode_no_param_grad
from ..datasets import DATASETS
from ..datasets.spec import load_metadata
from ..distributed import DistEnv, resolve_device
from ..engine.evaluator import attacked_model, defended_verdict
from ..errors import ZSBenchError
from ..methods import METHODS
from ..methods.defense import is_defense
from ..models import HeadKnobs, LoadedModel, ModelSpec, ZeroShotClassifier, build_text_head, load_model
from ..profiles import TRAIN_PROFILES
from ..provenance import software
from ..train.engine import _optimizer, apply_update, attack_seeds, prepare_models, step_loss
from . import measure
from .naive import NAIVE_METHODS, NaivePGD, NaiveTraining

#: ``--joint-forward``: the training engine's choice (GPU only), or forced on or off to compare.
JOINT_FORWARD: dict[str, bool | None] = {"auto": None, "on": True, "off": False}

#: The evaluation attack: PGD-10, L-inf, eps 1/255, step 1/255 (the benchmark's default threat).
EVAL_EPS, EVAL_STEP, EVAL_STEPS = 1 / 255, 1 / 255, 10


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; see ``zsbench bench --help`` for each field."""

    method: str = "pmg_aft"
    arch: str = "ViT-B-32"
    pretrained: str = "random"
    batch_size: int = 32
    eval_batch_size: int | None = None
    device: str = "auto"
    steps: int = 3
    warmup: int | None = None
    naive: bool = True
    naive_steps: int = 1
    precision: str = "auto"
    compile: bool = False
    threads: int | None = None
    joint_forward: str = "auto"
    seed: int = 0
    peak_size: int | None = None
    defense: str | None = None  # a test-time defense whose PGD-10 evaluation is timed, adaptive and not
    eot_samples: int | None = None  # its adaptive attack's EOT samples (None: the defense's)
    argv: tuple[str, ...] = field(default_factory=tuple)


def class_prompts() -> tuple[list[str], list[str]]:
    """TinyImageNet's 200 class names and the paper's prompt template (no data needed: bundled metadata)."""
    spec = DATASETS.get("tinyimagenet")
    table = load_metadata("imagenet_wnid_to_name")["names"]
    names = spec.prompt_classnames([table[w] for w in load_metadata("tinyimagenet_wnids")["wnids"]])
    return list(names), list(spec.templates)


def random_batch(n: int, size: tuple[int, int], classes: int, seed: int, device: torch.device):
    """``n`` images uniform in [0, 1], labels, and the per-image attack seeds the engine would use."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, *size, generator=gen).to(device)
    y = torch.randint(0, classes, (n,), generator=gen).to(device)
    return x, y, attack_seeds(np.arange(n), seed, 0)


class _Compiler:
    """``--compile``: the image towers inside the given classifiers become ``torch.compile`` d modules.

    Compilation happens at the first call; if it fails there, :meth:`undo` puts the eager towers back and the
    benchmark goes on without it (one line on stderr, ``compile`` recorded as failed).
    """

    def __init__(self, holders: list[nn.Module]) -> None:
        self.holders = holders
        self.eager = [h.visual for h in holders]
        self.active = False
        self.error: str | None = None

    def apply(self) -> None:
        for h in self.holders:
            h.visual = torch.compile(h.visual)
        self.active = True

    def undo(self, error: BaseException) -> None:
        for h, visual in zip(self.holders, self.eager, strict=True):
            h.visual = visual
        self.active = False
        self.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        print(f"zsbench: note: --compile failed ({self.error[:200]}); timing the eager model", file=sys.stderr)


def _run_phase(
    fn: Callable[[], object],
    device: torch.device,
    steps: int,
    warmup: int,
    compiler: _Compiler | None = None,
) -> dict:
    """Count FLOPs on one call (eager), warm up, time ``steps`` calls; the phase's figures and first result."""
    first: list = []
    flops, per_op = measure.count_flops(lambda: first.append(fn()))
    load = measure.load_average()
    if compiler is not None:
        compiler.apply()
    for i in range(warmup):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back to eager
            if compiler is None or not compiler.active or i > 0:
                raise
            compiler.undo(e)
            fn()
    seconds = [measure.timed(fn, device) for _ in range(steps)]
    return {
        "flops_per_step": flops,
        "flops_by_op": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
        **measure.summarize(seconds),
        "load_average": load,
        "first_result": first[0],
    }


def _rates(phase: dict, batch: int, peaks: dict[str, float], precision: str) -> dict:
    median = phase["median_seconds"]
    rate = phase["flops_per_step"] / median
    out = {
        "images_per_second": round(batch / median, 3),
        "flops_per_image": phase["flops_per_step"] / batch,
        "flop_per_second": rate,
        "fraction_of_fp32_peak": round(rate / peaks["fp32"], 4),
    }
    if precision == "bf16" and "bf16" in peaks:
        out["fraction_of_bf16_peak"] = round(rate / peaks["bf16"], 4)
    out["fraction_of_peak"] = out["fraction_of_bf16_peak" if precision == "bf16" else "fraction_of_fp32_peak"]
    return out


def _say(line: str) -> None:
    print(line, flush=True)


class Bench:
    """The state of one benchmark run (see the module docstring for the phases)."""

    def __init__(self, cfg: BenchConfig, echo: Callable[[str], None] = _say) -> None:
        if cfg.batch_size < 1 or cfg.steps < 1 or cfg.naive_steps < 1:
            raise ZSBenchError("--batch-size, --steps and --naive-steps must be at least 1")
        if cfg.joint_forward not in JOINT_FORWARD:
            raise ZSBenchError(f"--joint-forward {cfg.joint_forward}: choose {', '.join(JOINT_FORWARD)}")
        method_cls = METHODS.get(cfg.method)
        if method_cls.trains == "nothing":
            trainable = ", ".join(k for k, m in METHODS.items() if m.trains != "nothing")
            raise ZSBenchError(f"--method {cfg.method} does not train; choose one of {trainable}")
        if cfg.defense is not None and not is_defense(METHODS.get(cfg.defense)):
            defenses = ", ".join(k for k, m in METHODS.items() if is_defense(m))
            raise ZSBenchError(f"--defense {cfg.defense} is not a test-time defense; choose one of {defenses}")
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise ZSBenchError(f"--precision {cfg.precision}: choose auto, fp32 or bf16")
        self.cfg, self.echo = cfg, echo
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.precision = (
            cfg.precision if cfg.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        )
        self.warmup = cfg.warmup if cfg.warmup is not None else (2 if self.device.type == "cuda" or cfg.compile else 0)
        self.method = method_cls()
        self.recipe = method_cls.recipe
        # the head knobs of the official code the naive side reproduces (PMG-AFT's: ImageNet normalization, tau = 1)
        self.knobs = TRAIN_PROFILES["paper"].head_knobs()
        self.names, self.templates = class_prompts()
        self.base: LoadedModel = load_model(ModelSpec(cfg.arch, cfg.pretrained), "cpu")
        self.method.check_model(self.base.model, cfg.arch)
        self.eval_batch = cfg.eval_batch_size or cfg.batch_size
        self.peak_probe = {
            dt: measure.MatmulProbe(self.device, dt, cfg.peak_size) for dt in (torch.float32, torch.bfloat16)
        }
        self.peak_samples: dict[str, list[float]] = {"fp32": [], "bf16": []}
        self.notes: list[str] = []

    def joint_used(self) -> bool:
        """Whether the timed training step ran clean and adversarial images as one batch (for methods that can)."""
        joint = JOINT_FORWARD[self.cfg.joint_forward]
        return self.device.type == "cuda" if joint is None else joint

    # --- pieces ------------------------------------------------------------------------------------------------
    def fresh_model(self) -> LoadedModel:
        """A copy of the pre-trained backbone on the benchmark's device (each phase works on its own)."""
        return dataclasses.replace(self.base, model=copy.deepcopy(self.base.model).to(self.device))

    def _sample_peak(self, with_bf16: bool = False) -> None:
        self.peak_samples["fp32"].append(self.peak_probe[torch.float32].sample())
        if with_bf16:
            self.peak_samples["bf16"].append(self.peak_probe[torch.bfloat16].sample())

    def prompt_tokens(self) -> torch.Tensor:
        """The tokenized class prompts, in the order of the head's classes (one template: one prompt per class)."""
        return self.base.tokenizer([t.format(c) for c in self.names for t in self.templates])

    @staticmethod
    def clean_mask(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The clean correctness ``zsbench run`` computes once per dataset and hands every attack (untimed here)."""
        with torch.no_grad():
            return classifier(x).argmax(dim=1) == y

    def train_ours(self) -> dict:
        cfg = self.cfg
        loaded = self.fresh_model()
        head, _ = build_text_head(loaded.model, loaded.tokenizer, self.names, self.templates, None)
        models = prepare_models(self.method, loaded, self.knobs, head, self.device)
        opt = _optimizer(models.trainable, self.recipe)
        env = DistEnv(0, 1, 0, self.device)
        x, y, seeds = random_batch(cfg.batch_size, loaded.image_size, len(self.names), cfg.seed, self.device)
        extras = {"global_batch": cfg.batch_size, "epoch": 0, "step": 0}
        joint = JOINT_FORWARD[cfg.joint_forward]
        models.model.train()

        def step() -> float:
            scaled, _ = step_loss(self.method, models, x, y, seeds, self.recipe, self.precision, extras, joint)
            loss = float(scaled.detach())  # the engine reads it every step (its finiteness check)
            apply_update(scaled, models.trainable, opt, None, env)
            return loss

        holders = [models.model] + ([models.frozen] if models.frozen is not None else [])
        compiler = _Compiler(holders) if cfg.compile else None
        phase = _run_phase(step, self.device, cfg.steps, self.warmup, compiler)
        phase["loss_first_step"] = phase.pop("first_result")
        if compiler is not None:
            phase["compiled"] = compiler.active
        return phase

    def eval_ours(self) -> dict:
        cfg = self.cfg
        loaded = self.fresh_model()
        head, _ = build_text_head(loaded.model, loaded.tokenizer, self.names, self.templates, None)
        classifier = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, HeadKnobs()).to(self.device)
        x, y, _ = random_batch(self.eval_batch, loaded.image_size, len(self.names), cfg.seed + 1, self.device)
        seeds = torch.arange(self.eval_batch)
        threat = Threat("pgd", "linf", EVAL_EPS, EVAL_STEPS, EVAL_STEP)
        attack = ATTACKS.get("pgd").run
        clean = self.clean_mask(classifier, x, y)

        def run() -> int:
            with eval_mode_no_param_grad(classifier):  # as the evaluator wraps every attack, with its clean mask
                return int(attack(classifier, x, y, [threat], seeds, clean=clean)[threat].sum())

        compiler = _Compiler([classifier]) if cfg.compile else None
        phase = _run_phase(run, self.device, cfg.steps, self.warmup, compiler)
        phase["robust_first_batch"] = phase.pop("first_result")
        if compiler is not None:
            phase["compiled"] = compiler.active
        return phase

    def eval_defense(self, mode: str) -> dict:
        """The PGD-10 evaluation of one batch under ``--defense``, as ``zsbench run`` computes it for ``mode``
        (``adaptive`` or ``non_adaptive``: :func:`robustbench_zs.engine.evaluator.defended_verdict`), clean mask
        untimed as in :meth:`eval_ours`, so its images/s compare with the undefended evaluation's."""
        cfg = self.cfg
        loaded = self.fresh_model()
        head, _ = build_text_head(loaded.model, loaded.tokenizer, self.names, self.templates, None)
        classifier = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, HeadKnobs()).to(self.device)
        method = METHODS.get(cfg.defense)()

        def embed_text(names: list[str]) -> torch.Tensor:
            return build_text_head(loaded.model, loaded.tokenizer, names, self.templates, None)[0]

        defense = method.build_defense(classifier, embed_text).to(self.device)
        evaluation = type(method).evaluation_block(mode, cfg.eot_samples)
        attacked = attacked_model(defense, evaluation)
        x, y, _ = random_batch(self.eval_batch, loaded.image_size, len(self.names), cfg.seed + 1, self.device)
        seeds = torch.arange(self.eval_batch)
        threat = Threat("pgd", "linf", EVAL_EPS, EVAL_STEPS, EVAL_STEP)
        with eval_mode_no_param_grad(defense):
            defense.reseed(0)
            clean = self.clean_mask(defense, x, y)

        def run() -> int:
            with eval_mode_no_param_grad(defense):
                return int((defended_verdict(defense, attacked, threat, x, y, seeds, cfg.seed) & clean).sum())

        phase = _run_phase(run, self.device, cfg.steps, self.warmup)
        phase["robust_first_batch"] = phase.pop("first_result")
        phase["evaluation"] = evaluation
        return phase

    def train_naive(self) -> dict:
        cfg = self.cfg
        x, y, seeds = random_batch(cfg.batch_size, self.base.image_size, len(self.names), cfg.seed, self.device)
        tokens = self.prompt_tokens()
        naive = NaiveTraining(
            self.method,
            self.base.model,
            tokens,
            self.recipe,
            self.knobs,
            self.base.image_size,
            self.precision,
            self.device,
        )
        phase = _run_phase(lambda: float(naive.step(x, y, seeds)), self.device, cfg.naive_steps, self.warmup)
        phase["loss_first_step"] = phase.pop("first_result")
        return phase

    def eval_naive(self) -> dict:
        cfg = self.cfg
        x, y, _ = random_batch(self.eval_batch, self.base.image_size, len(self.names), cfg.seed + 1, self.device)
        seeds = torch.arange(self.eval_batch)
        naive = NaivePGD(self.base.model, self.prompt_tokens(), HeadKnobs(), self.base.image_size, self.device)
        with torch.no_grad():
            clean = naive.classify(x).argmax(dim=1) == y  # the official code's separate clean pass (untimed)
        run = lambda: int((naive(x, y, seeds, EVAL_EPS, EVAL_STEP, EVAL_STEPS) & clean).sum())  # noqa: E731
        phase = _run_phase(run, self.device, cfg.naive_steps, self.warmup)
        phase["robust_first_batch"] = phase.pop("first_result")
        return phase

    # --- the run -----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._sample_peak(with_bf16=True)
        phases: dict[str, dict] = {}
        self.echo(f"bench: {cfg.method} training step, ours ({cfg.steps} timed steps, batch {cfg.batch_size}) ...")
        phases["train_ours"] = self.train_ours()
        self._sample_peak()
        self.echo(f"bench: PGD-10 evaluation, ours ({cfg.steps} timed batches of {self.eval_batch}) ...")
        phases["eval_ours"] = self.eval_ours()
        self._sample_peak()
        if cfg.defense is not None:
            for mode in ("non_adaptive", "adaptive"):
                self.echo(
                    f"bench: PGD-10 evaluation of {cfg.defense}, {mode.replace('_', '-')} ({cfg.steps} timed) ..."
                )
                phases[f"defense_{mode.replace('_', '-')}"] = self.eval_defense(mode)
                self._sample_peak()
        naive_ok = cfg.naive and self.method.id in NAIVE_METHODS
        if cfg.naive and not naive_ok:
            self.notes.append(f"no naive baseline for {cfg.method} (it exists for {', '.join(NAIVE_METHODS)})")
        if naive_ok:
            self.echo(f"bench: {cfg.method} training step, naive ({cfg.naive_steps} timed) ...")
            phases["train_naive"] = self.train_naive()
            self._sample_peak()
            self.echo(f"bench: PGD-10 evaluation, naive ({cfg.naive_steps} timed) ...")
            phases["eval_naive"] = self.eval_naive()
        self._sample_peak(with_bf16=True)
        return self.report(phases, started)

    def report(self, phases: dict[str, dict], started: str) -> dict:
        cfg = self.cfg
        peaks = {k: statistics.median(v) for k, v in self.peak_samples.items() if v}
        sizes = {"train": cfg.batch_size, "eval": self.eval_batch, "defense": self.eval_batch}
        results: dict[str, dict] = {}
        for name, phase in phases.items():
            kind, who = name.split("_")
            precision = self.precision if kind == "train" else "fp32"
            results.setdefault(kind, {})[who] = {**phase, **_rates(phase, sizes[kind], peaks, precision)}
        for res in results.values():
            if "naive" in res:
                ours, naive = res["ours"], res["naive"]
                res["speedup"] = round(ours["images_per_second"] / naive["images_per_second"], 3)
                res["flops_ratio_naive_over_ours"] = round(naive["flops_per_image"] / ours["flops_per_image"], 3)
        if "defense" in results:  # what a defense's evaluation costs beside the undefended one, measured in this run
            plain = results["eval"]["ours"]["median_seconds"]
            for r in list(results["defense"].values()):
                r["seconds_over_undefended_eval"] = round(r["median_seconds"] / plain, 3)
            results["defense"]["name"] = cfg.defense
        if "naive" in results.get("train", {}):
            a, b = results["train"]["ours"]["loss_first_step"], results["train"]["naive"]["loss_first_step"]
            results["train"]["loss_relative_difference"] = abs(a - b) / max(abs(a), 1e-12)
        if "naive" in results.get("eval", {}):
            results["eval"]["same_robust_count"] = (
                results["eval"]["ours"]["robust_first_batch"] == results["eval"]["naive"]["robust_first_batch"]
            )
        settings = {
            **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "argv"},
            "device": str(self.device),
            "precision": self.precision,
            "warmup": self.warmup,
            "eval_batch_size": self.eval_batch,
            "classes": len(self.names),
            "prompt_template": self.templates,
            "image_size": list(self.base.image_size),
            "recipe": self.recipe.to_dict(),
            "method_config": self.method.config.to_dict(),
            "train_attack": {
                "eps_255": self.recipe.train_eps_255,
                "steps": self.recipe.train_steps,
                "step_size_255": self.recipe.train_step_size_255,
            },
            "eval_attack": {"name": "pgd", "norm": "linf", "eps_255": 1, "steps": EVAL_STEPS, "step_size_255": 1,
                            "precision": "fp32",
                            "timed": "the attack only, handed the clean mask as zsbench run hands it (its clean "
                                     "forward runs once per dataset; untimed here)"},
            "joint_forward_used": self.joint_used(),
            "flops": "torch.utils.flop_counter.FlopCounterMode (matmul, conv, attention; 2 per multiply-add) with "
            "the CPU flash-attention and fast-path multi-head-attention kernels added",
        }  # fmt: skip
        return {
            "benchmark": "zsbench bench",
            "created_utc": started,
            "command": "zsbench bench " + " ".join(cfg.argv) if cfg.argv else None,
            "machine": {**measure.describe_machine(self.device), "load_average_end": measure.load_average()},
            "software": software(),
            "settings": settings,
            "peak": {
                k: {
                    "dtype": k,
                    "size": self.peak_probe[torch.float32 if k == "fp32" else torch.bfloat16].size,
                    "flop_per_second": peaks[k],
                    "samples": [round(s) for s in v],
                }
                for k, v in self.peak_samples.items()
                if v
            },
            "results": results,
            "notes": self.notes,
        }


def table(report: dict) -> str:
    """The figures of a report as a text table (tabulate)."""
    rows = []
    for kind, label in (("train", f"train step ({report['settings']['method']})"), ("eval", "PGD-10 eval")):
        res = report["results"].get(kind, {})
        for who in ("ours", "naive"):
            if who not in res:
                continue
            r = res[who]
            rows.append(
                [
                    label,
                    who,
                    f"{r['images_per_second']:.2f}",
                    f"{r['median_seconds']:.2f}",
                    f"{r['flops_per_image'] / 1e9:.3g}",
                    f"{r['flop_per_second'] / 1e9:.3g}",
                    f"{100 * r['fraction_of_peak']:.0f}%",
                    f"{res['speedup']:.2f}x" if who == "ours" and "speedup" in res else "",
                ]
            )
    defense = report["results"].get("defense", {})
    for who in ("non-adaptive", "adaptive"):
        if who in defense:
            r = defense[who]
            rows.append(
                [
                    f"PGD-10 eval of {defense['name']}",
                    f"{who} (EOT-{r['evaluation']['eot_samples']})" if who == "adaptive" else who,
                    f"{r['images_per_second']:.2f}",
                    f"{r['median_seconds']:.2f}",
                    f"{r['flops_per_image'] / 1e9:.3g}",
                    f"{r['flop_per_second'] / 1e9:.3g}",
                    f"{100 * r['fraction_of_peak']:.0f}%",
                    f"{r['seconds_over_undefended_eval']:.1f}x the time",
                ]
            )
    headers = ["", "", "images/s", "s/batch", "GFLOP/image", "GFLOP/s", "of peak", "ours/naive"]
    peak = report["peak"]
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['torch_threads']} threads"
    lines = [
        f"{where}; torch {m['torch']}; {report['settings']['arch']} at {report['settings']['image_size'][0]} px, "
        f"batch {report['settings']['batch_size']}, {report['settings']['precision']}",
        tabulate(rows, headers=headers, tablefmt="simple"),
        "matmul peak: "
        + ", ".join(f"{k} {v['flop_per_second'] / 1e9:.1f} GFLOP/s (n={v['size']})" for k, v in peak.items())
        + f"; 'of peak': training against the {report['settings']['precision']} peak, evaluation (fp32) the fp32 one",
    ]
    return "\n".join(lines)


def run_bench(cfg: BenchConfig, out: Path | None, echo: Callable[[str], None] = _say) -> dict:
    """Run the benchmark, write the JSON to ``out`` (if given), print the table; returns the report."""
    report = Bench(cfg, echo).run()
    if out is not None:
        write_text(out, json.dumps(report, indent=1, default=str) + "\n")
    echo(table(report))
    if out is not None:
        echo(f"written: {out}")
    return report


def markdown_summary(reports: list[dict]) -> str:
    """One Markdown row per benchmark report (the README's performance table is this function's output)."""

    def pct(r: dict) -> str:
        return f"{100 * r['fraction_of_peak']:.0f}%"

    def pair(res: dict) -> tuple[str, str, str]:
        ours = res["ours"]
        naive = f"{res['naive']['images_per_second']:.3g}" if "naive" in res else "–"
        speedup = f"{res['speedup']:.2f}x" if "speedup" in res else "–"
        return f"{ours['images_per_second']:.3g}", naive, speedup

    head = (
        "| machine | model | training | train img/s: ours | naive | ours/naive | of peak "
        "| PGD-10 img/s: ours | naive | ours/naive | of fp32 peak |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for rep in reports:
        m, s, res = rep["machine"], rep["settings"], rep["results"]
        where = m.get("gpu") or f"{m['cpu']}, {m['torch_threads']} threads"
        train, evaluation = res["train"], res["eval"]
        t_ours, t_naive, t_x = pair(train)
        e_ours, e_naive, e_x = pair(evaluation)
        rows.append(
            f"| {where} | {s['arch']}, {s['image_size'][0]} px, batch {s['batch_size']} | {s['method']} {s['precision']} "
            f"| {t_ours} | {t_naive} | {t_x} | {pct(train['ours'])} ({s['precision']}) "
            f"| {e_ours} | {e_naive} | {e_x} | {pct(evaluation['ours'])} |"
        )
    return "\n".join(rows)
