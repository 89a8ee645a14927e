"""Clean and robust zero-shot accuracy of a classifier on a dataset, with per-example correctness."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Subset as TorchSubset

from .. import distributed as dist_utils
from ..attacks import ATTACKS, Threat
from ..attacks.core import eval_mode_no_param_grad
from ..attacks.sanity import zero_gradient_mask
from ..datasets.spec import ImageDataset
from ..datasets.subset import Subset, select_subset
from ..distributed import DistEnv
from ..errors import ZSBenchError, writing
from ..methods.defense import EOT, Defense, HeldSteps, stream_seed
from ..progress import Progress
from ..results.cost import Spent
from ..results.store import remove_stale_temps

SEED_STRIDE = 1_000_003


class _State:
    """Per-example progress of one evaluation, optionally mirrored to an ``.npz`` file after every batch."""

    def __init__(self, path: Path | None, indices: np.ndarray, slugs: list[str]) -> None:
        n = len(indices)
        self.path, self.indices, self.slugs = path, np.asarray(indices, dtype=np.int64), list(slugs)
        self.done = np.zeros(n, dtype=bool)
        self.clean = np.zeros(n, dtype=bool)
        self.robust = {s: np.zeros(n, dtype=bool) for s in slugs}
        # the attack's own verdict where the clean pass says misclassified (must never happen: a sanity check)
        self.above_clean = {s: np.zeros(n, dtype=bool) for s in slugs}
        self.zero_grad = np.zeros(n, dtype=bool)  # all-zero input gradient at the clean image (a sanity check)
        self.components: dict[str, dict[str, np.ndarray]] = {s: {} for s in slugs}  # AutoAttack, per component
        self.info: dict[str, dict] = {}  # AutoAttack: implementation, components run and skipped (per slug)
        self.spent = Spent()  # the seconds of earlier attempts (a killed evaluation's, read back from the file)

    @classmethod
    def open(cls, path: Path | None, indices: np.ndarray, slugs: list[str]) -> _State:
        st = cls(path, indices, slugs)
        if path is not None:
            # what a killed process left while writing this file (the pid in its name is no longer running)
            remove_stale_temps(Path(path).parent, min_age_s=0, prefix=f".{Path(path).stem}.", recursive=False)
        if path is None or not Path(path).is_file():
            return st
        try:
            with np.load(path, allow_pickle=False) as f:
                same = (
                    np.array_equal(f["indices"], st.indices)
                    and [str(s) for s in f["slugs"]] == st.slugs
                    and f["done"].shape == st.done.shape
                )
                if same:
                    st.done, st.clean = f["done"].astype(bool), f["clean"].astype(bool)
                    st.robust = {s: f[f"robust_{i}"].astype(bool) for i, s in enumerate(st.slugs)}
                    st.above_clean = {s: f[f"above_{i}"].astype(bool) for i, s in enumerate(st.slugs)}
                    st.zero_grad = f["zero_grad"].astype(bool)
                    st.info = json.loads(str(f["info"]))
                    for i, s in enumerate(st.slugs):
                        names = st.info.get(s, {}).get("components", [])
                        st.components[s] = {c: f[f"comp_{i}_{j}"].astype(bool) for j, c in enumerate(names)}
                    st.spent = _spent_in(f)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable or from another evaluation: start afresh (it is overwritten below)
        return st

    def save(self, spent: Spent | None = None) -> None:
        """Write the progress file atomically (temporary file, then rename), with ``spent``: the seconds of every
        attempt so far, this one's included, which a resumed evaluation adds to its own. A full, read-only or
        forbidden disk is a one-line :class:`~robustbench_zs.errors.ZSBenchError`; the temporary file never stays
        behind."""
        if self.path is None:
            return
        path = Path(self.path)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        arrays = {}
        for i, s in enumerate(self.slugs):
            arrays[f"robust_{i}"] = self.robust[s]
            arrays[f"above_{i}"] = self.above_clean[s]
            for j, c in enumerate(self.info.get(s, {}).get("components", [])):
                arrays[f"comp_{i}_{j}"] = self.components[s][c]
        with writing(path, cleanup=(tmp,)):
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                tmp,
                indices=self.indices,
                slugs=np.array(self.slugs),
                done=self.done,
                clean=self.clean,
                zero_grad=self.zero_grad,
                info=np.array(json.dumps(self.info)),
                spent=np.array(json.dumps((spent or self.spent).to_dict())),
                **arrays,
            )
            os.replace(tmp, path)

    def merge(self, out: _Batch) -> None:
        """Take in the outcome of one batch (this process's, or another process's of a sharded evaluation)."""
        pos = out.pos
        self.clean[pos] = out.clean
        if out.zero_grad is not None:
            self.zero_grad[pos] = out.zero_grad
        for s in self.slugs:
            self.robust[s][pos] = out.robust[s]
            self.above_clean[s][pos] = out.above_clean[s]
            if s in out.reports:
                self.add_report(s, pos, out.reports[s])
        self.done[pos] = True

    def add_report(self, slug: str, pos: np.ndarray, entry: dict) -> None:
        """Merge one batch's AutoAttack report: per-component masks at ``pos``, and what ran (the same per batch)."""
        info = self.info.setdefault(slug, {"components": []})
        for key in ("implementation", "n_classes", "ran", "skipped", "n_target_classes", "settings", "seed"):
            if key in entry:
                info[key] = entry[key]
        for c, mask in entry.get("masks", {}).items():
            if c not in self.components[slug]:
                self.components[slug][c] = np.zeros(len(self.indices), dtype=bool)
                info["components"].append(c)
            self.components[slug][c][pos] = _bools(mask)


def _spent_in(f) -> Spent:
    """The seconds a progress file counted; none in one from before costs were recorded, or an unreadable one."""
    try:
        return Spent.from_dict(json.loads(str(f["spent"])))
    except (KeyError, ValueError):
        return Spent()


@dataclass
class _Batch:
    """What one batch gave, as plain arrays (so that it can be sent between processes): positions in subset order,
    clean correctness, the zero-gradient mask, per threat slug the robust and above-clean masks and the attack's
    report, and the seconds spent per slug."""

    pos: np.ndarray
    clean: np.ndarray
    zero_grad: np.ndarray | None
    robust: dict[str, np.ndarray]
    above_clean: dict[str, np.ndarray]
    reports: dict[str, dict]
    seconds: dict[str, float]


@dataclass
class EvalResult:
    """Per-example outcomes in subset order.

    Attributes:
        indices: the evaluated image indices of the split.
        clean: correct on the clean image.
        robust: per threat, correct on the clean image and under the attack.
        seconds: wall time per threat slug (``clean`` included).
        above_clean: per threat, images the attack itself called robust although the clean pass misclassifies
            them (a sanity check: should be all False).
        zero_grad: images whose input gradient of the cross-entropy is all zero at the clean image (None without
            threats).
        reports: per threat of an attack that reports (AutoAttack): implementation, components run and skipped, and
            ``masks`` (component -> per-image robust after it and every earlier one, subset order).
        processes: how many processes computed it (a sharded evaluation under torchrun), and ``process_seconds``
            the seconds per slug summed over them (``seconds`` holds the slowest process's).
        spent: the wall seconds of the whole evaluation (loading, attacks and saving progress), of this attempt and
            of every earlier one its progress file counted, with every process's seconds and device-seconds
            (:class:`~robustbench_zs.results.cost.Spent`).
    """

    indices: np.ndarray
    clean: np.ndarray
    robust: dict[Threat, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    above_clean: dict[Threat, np.ndarray] = field(default_factory=dict)
    zero_grad: np.ndarray | None = None
    reports: dict[Threat, dict] = field(default_factory=dict)
    processes: int = 1
    process_seconds: dict[str, float] = field(default_factory=dict)
    spent: Spent = field(default_factory=Spent)

    @property
    def n(self) -> int:
        return len(self.indices)

    def accuracy(self, threat: Threat | None = None) -> float:
        mask = self.clean if threat is None or threat.is_clean else self.robust[threat]
        return float(mask.mean()) if len(mask) else float("nan")


def _bools(mask) -> np.ndarray:
    """A per-image mask (tensor on any device, or array) as a numpy bool array."""
    return np.asarray(mask.cpu() if torch.is_tensor(mask) else mask, dtype=bool)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attacked_model(defense: Defense, evaluation: dict | None) -> nn.Module:
    """What the attack differentiates under ``evaluation``: the defense itself, or its expectation over
    ``eot_samples`` draws (:class:`~robustbench_zs.methods.defense.EOT`), when adaptive; when not, what the defense's
    paper attacked: the undefended classifier, or the defense with its steps held
    (:class:`~robustbench_zs.methods.defense.HeldSteps`)."""
    if evaluation is None:
        raise ZSBenchError(
            "a test-time defense is attacked under an evaluation: pass evaluation=METHOD.evaluation_block('adaptive') "
            "(or 'non_adaptive') to evaluate"
        )
    if evaluation["adaptive"]:
        return EOT(defense, evaluation["eot_samples"])
    return HeldSteps(defense) if evaluation.get("attack_on") == "held_steps" else defense.classifier


def defended_verdict(
    defense: Defense,
    attacked: nn.Module,
    threat: Threat,
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: torch.Tensor,
    batch_seed: int,
) -> torch.Tensor:
    """Per image, whether the deployed defense classifies the attack's image correctly: the attack runs on
    ``attacked`` (:func:`attacked_model`), then one draw of the defense classifies its images. The defense's
    randomness is reseeded for each (``stream_seed`` of the batch and the threat)."""
    defense.reseed(stream_seed(batch_seed, f"attack:{threat.slug}"))
    x_adv = ATTACKS.get(threat.name).perturb(attacked, x, y, threat, seeds)
    defense.reseed(stream_seed(batch_seed, f"verdict:{threat.slug}"))
    with torch.no_grad():
        return defense(x_adv).argmax(dim=1) == y


def _run_batch(
    classifier: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    pos: np.ndarray,
    subset: Subset,
    seed: int,
    threats: list[Threat],
    known: np.ndarray | None,
    known_zero: np.ndarray | None,
    device: torch.device,
    evaluation: dict | None = None,
) -> _Batch:
    """Clean pass (unless ``known``), zero-gradient mask and every threat on one batch at subset positions ``pos``.

    A test-time defense (``classifier`` a :class:`~robustbench_zs.methods.defense.Defense`) is attacked as its
    ``evaluation`` says (see :func:`evaluate`); its randomness is reseeded per batch and per use (clean pass,
    zero-gradient check, each attack, each verdict), so no use's draws depend on which others ran."""
    x = images.to(device, non_blocking=True).float().div_(255)
    y = labels.to(device, non_blocking=True)
    seeds = torch.as_tensor(subset.indices[pos], dtype=torch.long) + seed * SEED_STRIDE
    defense = classifier if isinstance(classifier, Defense) else None
    batch_seed = int(seeds[0]) if len(seeds) else 0  # a defense's draws: one stream per batch and use

    def use(what: str) -> None:
        if defense is not None:
            defense.reseed(stream_seed(batch_seed, what))

    seconds = {"clean": 0.0, **{t.slug: 0.0 for t in threats}}
    if known is not None:
        correct = torch.as_tensor(known[pos], device=device)
    else:
        t0 = time.perf_counter()
        use("clean")
        with torch.no_grad():
            correct = classifier(x).argmax(dim=1) == y
        _sync(device)
        seconds["clean"] += time.perf_counter() - t0
    attacked = classifier if defense is None or not threats else attacked_model(defense, evaluation)
    zero = None
    if threats:
        use("zero_grad")  # the gradient the attack follows: through the defense when adaptive
        zero = known_zero[pos] if known_zero is not None else zero_gradient_mask(attacked, x, y).numpy()
    robust, above, reports = {}, {}, {}
    for t in threats:
        if defense is not None:
            t0 = time.perf_counter()
            verdict = defended_verdict(defense, attacked, t, x, y, seeds, batch_seed)
            _sync(device)
            seconds[t.slug] += time.perf_counter() - t0
            robust[t.slug] = (verdict & correct).cpu().numpy()
            # the attack's own verdict (on another model, or on the expectation) is not the defense's: nothing to check
            above[t.slug] = np.zeros(len(pos), dtype=bool)
            continue
        entry = ATTACKS.get(t.name)
        report: dict | None = {} if entry.reports else None
        kwargs: dict = {} if report is None else {"report": report}
        if entry.takes_clean:
            kwargs["clean"] = correct  # the clean pass above: the attack skips its own
        t0 = time.perf_counter()
        verdict = entry.run(classifier, x, y, [t], seeds, **kwargs)[t]
        _sync(device)
        seconds[t.slug] += time.perf_counter() - t0
        robust[t.slug] = (verdict & correct).cpu().numpy()
        above[t.slug] = (verdict & ~correct).cpu().numpy()
        if report:
            got = report[t.slug]
            masks = {c: _bools(m) for c, m in got.get("masks", {}).items()}
            reports[t.slug] = {**{k: v for k, v in got.items() if k != "masks"}, "masks": masks}
    return _Batch(pos, correct.cpu().numpy(), zero, robust, above, reports, seconds)


def evaluate(
    classifier: nn.Module,
    dataset: ImageDataset,
    threats: list[Threat] | tuple[Threat, ...] = (),
    *,
    subset: Subset | None = None,
    batch_size: int = 128,
    seed: int = 0,
    workers: int = 0,
    progress: bool | None = None,
    desc: str = "eval",
    clean: np.ndarray | None = None,
    zero_grad: np.ndarray | None = None,
    state_path: Path | None = None,
    shard: DistEnv | None = None,
    evaluation: dict | None = None,
) -> EvalResult:
    """Evaluate ``classifier`` clean and under each threat.

    Args:
        classifier: maps images in [0, 1] (B, 3, H, W) to logits (B, C); its device is used.
        dataset: yields (uint8 image (3, H, W), label).
        threats: attacks to run (the clean evaluation always runs).
        subset: which images; the full split by default.
        seed: drives the attacks' random starts (per image, so results do not depend on batching).
        progress: show a progress bar (None: a bar on a terminal, else a line at a steady interval; see
            :mod:`robustbench_zs.progress`).
        clean: clean correctness of these images (subset order) from an earlier pass; skips the clean forward.
        zero_grad: the zero-input-gradient mask of these images from an earlier pass (skips that backward pass).
        state_path: per-example progress file (``.npz``). Each finished batch is saved there; a call with the same
            file, images and threats continues with the images not yet decided. Attacks are seeded per image, so a
            resumed evaluation gives the same per-example results as an uninterrupted one.
        shard: the torchrun job this process belongs to: its batches are split across the processes (batch k to
            process k mod W), each process attacks its own, and every process ends with the merged results; only
            process 0 shows progress and writes ``state_path``. The results equal one process's, bit for bit, and a
            state file written under one number of processes resumes under another.
        evaluation: how a test-time defense (``classifier`` a :class:`~robustbench_zs.methods.defense.Defense`) is
            attacked (``DefenseMethod.evaluation_block``): ``adaptive`` attacks run on the defense itself (on its
            expectation over ``eot_samples`` draws when that is above 1), non-adaptive ones on the undefended
            classifier; either way the defense's own forward (one draw) gives the verdict on the attacked image.

    The wall seconds of the call, and of the earlier attempts that ``state_path`` counted (saved with every batch),
    are in ``EvalResult.spent``: a resumed evaluation costs what all its attempts cost.
    """
    started = time.perf_counter()
    device = next(classifier.parameters()).device
    per_device = torch.get_num_threads() if device.type == "cpu" else 1  # CPU: threads; else one GPU a process
    subset = subset or select_subset(len(dataset), None, seed)
    threats = [t for t in threats if not t.is_clean]
    known = None if clean is None else np.asarray(clean, dtype=bool)
    if known is not None and len(known) != subset.n:
        raise ValueError(f"clean has {len(known)} entries for {subset.n} images")
    known_zero = None if zero_grad is None else np.asarray(zero_grad, dtype=bool)
    if known_zero is not None and len(known_zero) != subset.n:
        raise ValueError(f"zero_grad has {len(known_zero)} entries for {subset.n} images")
    state = _State.open(state_path, subset.indices, [t.slug for t in threats])
    todo = np.flatnonzero(~state.done)  # positions (in subset order) still to evaluate
    # batches of the images still to do; a sharded evaluation hands them out in turn (batch k to process k mod W),
    # so every batch holds the images it holds in one process, and each image keeps its seed
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    rank, world = (0, 1) if shard is None else (shard.rank, shard.world_size)
    mine = batches[rank::world]

    def spent_so_far() -> Spent:
        """Earlier attempts plus this one as process 0 sees it (the processes run in step, each round gathered)."""
        return state.spent + Spent.of_processes([(device.type, time.perf_counter() - started, per_device)] * world)

    loader = DataLoader(
        TorchSubset(dataset, subset.indices[np.concatenate(mine)].tolist() if mine else []),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    seconds = {"clean": 0.0, **{t.slug: 0.0 for t in threats}}
    main = rank == 0
    shown = Progress(subset.n, desc, "images", show=progress if main else False, initial=subset.n - len(todo))
    with eval_mode_no_param_grad(classifier), shown:
        it = iter(loader)
        for k in range(-(-len(batches) // world)):  # rounds: one batch per process
            out = None
            if k < len(mine):
                images, labels = next(it)
                out = _run_batch(
                    classifier, images, labels, mine[k], subset, seed, threats, known, known_zero, device, evaluation
                )
                for slug, sec in out.seconds.items():
                    seconds[slug] += sec
            outs = [out] if shard is None else dist_utils.gather_objects(out, shard)
            for o in outs:
                if o is not None:
                    state.merge(o)
            if main:
                state.save(spent_so_far())
            shown.update(sum(len(o.pos) for o in outs if o is not None))
    took = (seconds, (device.type, time.perf_counter() - started, per_device))
    per_process = [took] if shard is None else dist_utils.gather_objects(took, shard)
    reports = {}
    for t in threats:
        if t.slug in state.info:
            info = {k: v for k, v in state.info[t.slug].items() if k != "components"}
            reports[t] = {**info, "masks": {c: state.components[t.slug][c].copy() for c in state.components[t.slug]}}
    return EvalResult(
        indices=subset.indices,
        clean=state.clean.copy(),
        robust={t: state.robust[t.slug].copy() for t in threats},
        seconds={k: max(p[k] for p, _ in per_process) for k in seconds},
        above_clean={t: state.above_clean[t.slug].copy() for t in threats},
        zero_grad=state.zero_grad.copy() if threats else None,
        reports=reports,
        processes=world,
        process_seconds={k: sum(p[k] for p, _ in per_process) for k in seconds},
        spent=state.spent + Spent.of_processes(t for _, t in per_process),
    )
