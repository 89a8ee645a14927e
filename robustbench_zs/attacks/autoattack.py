"""Standard AutoAttack (Croce & Hein, ICML 2020), L-inf and L2: APGD-CE, APGD-T, FAB-T, Square.

Two implementations, chosen once, at first use (``registered_settings``; ``refresh_implementation`` re-checks), so
that the settings in the records always name the one that ran; importing this module does no such work:

- ``fra31/auto-attack`` when the official package is importable (it is installed from git, not PyPI; its version is
  always 0.1, so the records carry its git commit): ``AutoAttack(model, norm, eps, version='standard')`` and
  ``run_standard_evaluation(x, y, bs=len(x))`` on each batch. The official code draws the random numbers of a whole
  batch from one generator seeded with ``aa.seed`` (here the first per-image seed of the batch), and Square moves the
  same square in every image of a batch, so its results can change with the batch size.
- ``torchattacks components`` otherwise: the same four attacks, in the same order, at the official standard
  settings (``STANDARD``), each on the points still robust after the previous ones; never torchattacks'
  ``AutoAttack`` class (its APGD, APGD-T and FAB run 10 iterations and APGD-T uses n_classes - 1 targets).
  APGD-CE and APGD-T are ``robustbench_zs.attacks.apgd`` (the official algorithm with per-image random starts: the
  batched torchattacks APGD draws one random start for the whole batch); FAB-T is ``torchattacks.FAB`` (1 restart:
  it draws no random numbers, so it runs batched); Square is, for L-inf, ``robustbench_zs.attacks.square.square_linf``
  (torchattacks' L-inf Square run on all the still-robust images of a batch at once, each image with its own random
  stream seeded from its seed: it gets the same random numbers as ``torchattacks.Square`` run on that image alone,
  whereas torchattacks' batched run moves one square in every image) and, for L2, ``torchattacks.Square`` run on one
  image at a time, seeded from that image's seed. Per-image results therefore do not depend on the batch size (up to
  floating-point differences of batched matrix products). The global torch random state is saved and restored around
  the torchattacks components.

Both: the number of target classes is min(9, n_classes - 1); with fewer than 4 classes (PCAM has 2) APGD-T is
skipped, because the targeted DLR loss divides by z_(1) - (z_(3) + z_(4)) / 2 of the sorted logits; FAB-T runs
with 2 or more classes (its targets are the 2nd, 3rd, ... most likely classes: one target with 2 classes); with
eps = 0 nothing runs and robust = clean. A point is robust only if it is classified correctly on its clean image and
survives every component that ran. Pass ``report={}`` to ``run_autoattack`` (or read ``run_autoattack.last_report``)
to see, per threat, which components ran, which were skipped and why, and how many points each left robust.
``AutoAttack.perturb`` (the registry's ``perturb``) returns the adversarial images of the same cascade. Every
component setting in ``STANDARD`` (or an override) is passed to the code that runs it, so a report never names a
setting that did not run; the official package's results depend on the batch, so its settings say
``depends_on_batch_size`` and ``zsbench run`` keys its records on the attack batch size.

Precision (``Threat.precision``): ``fp32`` (autocast off) or ``fp16``, which reproduces the official PMG-AFT code: there
AutoAttack attacked ``model_fn``, the CLIP forward inside ``torch.cuda.amp.autocast()`` with its logits cast to
float32. Here the model is wrapped the same way (``AutocastForward``: the forward under float16 autocast on the
images' device, ``logits.float()``) and the wrapper is what every part of the attack calls: the clean check, every
forward of every component (for both implementations) and the final verdict. Nothing else changes: the losses
(AutoAttack's own per-image CE, targeted DLR and margin, summed over the batch), step rules, targets, seeds and the
cascade are the standard ones, and everything outside the model's forward stays in fp32 (autocast off). bf16 is
refused.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch
from torch import nn

from ..errors import ZSBenchError
from .apgd import MIN_CLASSES_TARGETED_DLR, apgd_ce, apgd_targeted, stream_seeds
from .base import ATTACKS, Attack, AttackEntry, Threat, require_precision
from .core import attack_autocast, eval_mode_no_param_grad
from .square import square_linf

OFFICIAL = "fra31/auto-attack"
COMPONENTS = "torchattacks components"
IMPLEMENTATIONS = (OFFICIAL, COMPONENTS)

ORDER = ("apgd-ce", "apgd-t", "fab-t", "square")
N_TARGET_CLASSES = 9


def _official_standard() -> dict[str, dict]:
    """A fresh copy of the official ``version='standard'`` settings: what the records state (``describe``), whatever
    a test has set in ``STANDARD``."""
    return {
        "apgd-ce": {"n_iter": 100, "n_restarts": 1, "loss": "ce", "rho": 0.75, "eot_iter": 1},
        "apgd-t": {
            "n_iter": 100,
            "n_restarts": 1,
            "loss": "dlr-targeted",
            "n_target_classes": N_TARGET_CLASSES,
            "rho": 0.75,
            "eot_iter": 1,
        },
        "fab-t": {
            "n_iter": 100,
            "n_restarts": 1,
            "n_target_classes": N_TARGET_CLASSES,
            "alpha_max": 0.1,
            "eta": 1.05,
            "beta": 0.9,
        },
        "square": {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin", "resc_schedule": False},
    }


STANDARD: dict[str, dict] = _official_standard()
"""The official ``version='standard'`` settings (fra31/auto-attack ``autoattack.py``: the constructors plus
``set_version('standard')``) for L-inf and L2, which the components run with. ``n_target_classes`` is capped at
n_classes - 1 when run."""

# ------------------------------------------------------------------------- APGD-CE + APGD-T (version='custom')
APGD_PAIR = "apgd-ce+t"
APGD_ORDER = ("apgd-ce", "apgd-t")
#: APGD-CE's restarts under ``version='custom'``: the ``AutoAttack`` constructor builds APGD-CE with
#: ``n_restarts=5`` and only ``set_version`` (never called for ``custom``) sets it to 1; APGD-T keeps 1 restart
CUSTOM_APGD_CE_RESTARTS = 5
APGD_PAIR_IMPLEMENTATION = "robustbench_zs.attacks.apgd"
APGD_PAIR_PRECISIONS = ("fp32",)  # APGD-T's margin loss needs fp32 logits (see apgd.py)


def _apgd_pair(standard: dict[str, dict]) -> dict[str, dict]:
    """The settings of ``apgd-ce+t`` from AutoAttack's standard ones: APGD-CE with 5 restarts, APGD-T as standard."""
    return {
        "apgd-ce": {**standard["apgd-ce"], "n_restarts": CUSTOM_APGD_CE_RESTARTS},
        "apgd-t": dict(standard["apgd-t"]),
    }


MIN_CLASSES = {"apgd-ce": 2, "apgd-t": MIN_CLASSES_TARGETED_DLR, "fab-t": 2, "square": 2}
_WHY = {
    "apgd-ce": "the cross-entropy of a 1-class classifier is constant",
    "apgd-t": "the targeted DLR loss uses the 4th-largest logit: it needs at least 4 classes",
    "fab-t": "FAB-T needs at least one target class other than the true one (2 classes)",
    "square": "the margin loss needs a second class",
}
_NORMS = {"linf": "Linf", "l2": "L2"}
_SQUARE_STREAM = 4000

PRECISIONS = ("fp32", "fp16")
"""``Threat.precision`` values AutoAttack runs in (bf16 is refused)."""
#: ``bs`` of the official package's ``run_standard_evaluation`` under fp16: the official PMG-AFT code called it with
#: ``bs=100`` on each evaluation batch of 256 (``PMG_AFT.py``, ``validate``).
OFFICIAL_FP16_BS = 100
PRECISION_DETAIL = {
    "fp16": "every forward (clean check, every component's forwards, the verdict) under float16 autocast, logits "
    "cast to float32; AutoAttack's own losses and steps unchanged (APGD: per-image CE / targeted DLR summed over the "
    "batch); the official PMG-AFT code's model_fn inside autocast; with fra31/auto-attack, "
    f"run_standard_evaluation(bs={OFFICIAL_FP16_BS}) on each evaluation batch, as that code",
}
"""What a non-fp32 precision means for AutoAttack, for its per-threat report (``precision_detail``)."""


class AutocastForward(nn.Module):
    """``model``'s forward under ``attack_autocast(x.device, precision)``, returning ``logits.float()``.

    For ``fp16`` this is the official PMG-AFT ``model_fn`` inside ``autocast()``. The autocast region is entered
    inside the forward, so it holds even where the attack code around it turned autocast off (APGD's
    ``attack_autocast(device, "fp32")``): a nested autocast region re-enables it. The wrapper shares the model's
    parameters and reports its train/eval flag without changing it.
    """

    def __init__(self, model: nn.Module, precision: str) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.training = model.training  # (not .train(): that would set the model's mode too)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with attack_autocast(x.device, self.precision):
            logits = self.model(x)
        return logits.float()


def _forward_for(model: nn.Module, precision: str) -> nn.Module:
    """What the attack calls at ``precision``: the model itself in fp32 (unchanged), else ``AutocastForward``."""
    return model if precision == "fp32" else AutocastForward(model, precision)


# ----------------------------------------------------------------------------------------------- official package
def official_available() -> bool:
    """Whether ``import autoattack`` would find a module (without importing it)."""
    if "autoattack" in sys.modules:
        return sys.modules["autoattack"] is not None
    try:
        return importlib.util.find_spec("autoattack") is not None
    except (ImportError, ValueError):
        return False


def _git_head(start: Path) -> str | None:
    """The commit checked out in the git work tree that contains ``start`` (reads .git directly; no git needed)."""
    for folder in [start, *start.parents]:
        git = folder / ".git"
        if git.is_file():
            m = re.match(r"gitdir:\s*(.+)", git.read_text().strip())
            if not m:
                return None
            git = (folder / m.group(1)).resolve()
        if not git.is_dir():
            continue
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else None
        ref = head[4:].strip()
        if (git / ref).is_file():
            sha = (git / ref).read_text().strip()
            return sha if re.fullmatch(r"[0-9a-f]{40}", sha) else None
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and re.fullmatch(r"[0-9a-f]{40}", parts[0]):
                    return parts[0]
        return None
    return None


def official_commit() -> str:
    """Git commit of the installed fra31/auto-attack: pip's direct_url.json, else the checkout holding the package."""
    with contextlib.suppress(Exception):
        raw = importlib.metadata.distribution("autoattack").read_text("direct_url.json")
        if raw:
            info = json.loads(raw)
            commit = (info.get("vcs_info") or {}).get("commit_id")
            if commit:
                return str(commit)
            url = urlparse(info.get("url", ""))
            if url.scheme == "file":
                sha = _git_head(Path(unquote(url.path)))
                if sha:
                    return sha
    with contextlib.suppress(Exception):
        module = sys.modules.get("autoattack")
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin is None:
            spec = importlib.util.find_spec("autoattack")
            origin = spec.origin if spec is not None else None
        if origin:
            sha = _git_head(Path(origin).resolve().parent)
            if sha:
                return sha
    return "unknown"


def _torchattacks_version() -> str:
    try:
        return importlib.metadata.version("torchattacks")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------------ settings
def describe(implementation: str) -> dict:
    """The settings that go into every record for ``implementation`` (JSON-serializable)."""
    common = {
        "version": "standard",
        "implementation": implementation,
        "components": list(ORDER),
        "settings": _official_standard(),
        "n_target_classes": "min(9, n_classes - 1)",
        "fewer_than_4_classes": "APGD-T skipped (targeted DLR undefined); FAB-T and Square run with >= 2 classes",
        "cascade": "each component attacks only the points still robust after the previous ones",
        "robust_if": "correct on the clean image and not fooled by any component that ran",
        "threat_steps_and_step_size": "not used (the components fix their own iterations and step sizes)",
    }
    if implementation == OFFICIAL:
        return {
            **common,
            "commit": official_commit(),
            "seed": "aa.seed = the first per-image seed of each batch; the official code draws random numbers per "
            "batch, so results can change with the batch size",
            "batch": "run_standard_evaluation(x, y, bs=len(x)) on each evaluation batch (the last one can be "
            "smaller); zsbench run records the batch size as attack_batch_size and keys the record on it",
            "depends_on_batch_size": True,
        }
    if implementation == COMPONENTS:
        return {
            **common,
            "torchattacks_version": _torchattacks_version(),
            "component_code": {
                "apgd-ce": "robustbench_zs.attacks.apgd (official algorithm, per-image random start)",
                "apgd-t": "robustbench_zs.attacks.apgd (official algorithm, per-image random start)",
                "fab-t": "torchattacks.FAB(multi_targeted=True), batched (1 restart: no random numbers)",
                "square": "L-inf: robustbench_zs.attacks.square.square_linf, torchattacks' Square batched with one "
                "random stream per image (the same random numbers as one image at a time); L2: torchattacks.Square, "
                "one image at a time",
            },
            "seed": "per image: APGD starts and Square are seeded from the image's seed, so results do not depend "
            "on the batch size",
        }
    raise ZSBenchError(
        f"unknown AutoAttack implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}"
    )


def describe_apgd_pair() -> dict:
    """The settings that go into every ``apgd-ce+t`` record (JSON-serializable)."""
    return {
        "version": "custom",
        "attacks_to_run": list(APGD_ORDER),
        "implementation": APGD_PAIR_IMPLEMENTATION,
        "components": list(APGD_ORDER),
        "settings": _apgd_pair(_official_standard()),
        "n_target_classes": "min(9, n_classes - 1)",
        "fewer_than_4_classes": "APGD-T skipped (targeted DLR undefined): APGD-CE alone, as RobustVLM on PCAM",
        "cascade": "APGD-T attacks only the points APGD-CE left robust; each APGD-CE restart only those still robust",
        "robust_if": "correct on the clean image and not fooled by APGD-CE (any restart) nor APGD-T (any target)",
        "threat_steps_and_step_size": "not used (100 iterations per run, initial step 2 * eps, adapted)",
        "seed": "per image: random starts seeded from (image seed, component, target, restart), so results do not "
        "depend on the batch size (RobustVLM's AutoAttack seeds each run from the clock)",
        "source": "RobustVLM's zero-shot evaluation (chs20/RobustVLM, CLIP_benchmark/clip_benchmark/metrics/"
        "zeroshot_classification.py and CLIP_eval/clip_robustbench.py): AutoAttack(version='custom', "
        "attacks_to_run=['apgd-ce', 'apgd-t']), whose constructor gives APGD-CE 5 restarts and APGD-T 1 restart of "
        "100 iterations and 9 targets",
    }


APGD_PAIR_SETTINGS = describe_apgd_pair()


@functools.cache
def registered_settings() -> dict:
    """The settings of the implementation that runs (official package importable or not), detected at first use."""
    return describe(OFFICIAL if official_available() else COMPONENTS)


def refresh_implementation() -> str:
    """Detect the implementation again (official package importable or not) and update the registered settings."""
    registered_settings.cache_clear()
    return registered_settings()["implementation"]


class _RegisteredSettings(Mapping):
    """A read-only view of ``registered_settings()``: the registry's ``fixed_settings``, detected when first read."""

    def __getitem__(self, key: str):
        return registered_settings()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(registered_settings())

    def __len__(self) -> int:
        return len(registered_settings())

    def __repr__(self) -> str:
        return repr(registered_settings())


AUTOATTACK_SETTINGS: Mapping = _RegisteredSettings()


# ------------------------------------------------------------------------------------------------------ helpers
SUPPORTED_VALUES: dict[tuple[str, str], tuple] = {
    ("apgd-ce", "loss"): ("ce",),
    ("apgd-t", "loss"): ("dlr-targeted",),
    ("square", "loss"): ("margin", "ce"),
}
"""Settings whose overrides these components cannot run with other values (Square, both codes: margin or ce)."""


def _merge(overrides: dict | None, base: dict[str, dict] | None = None) -> dict[str, dict]:
    """``base`` (default ``STANDARD``) with per-component overrides; every value is then passed to the code that runs
    the component, so the settings in a report are the ones that ran. Unknown names and unsupported values are
    refused up front."""
    settings = copy.deepcopy(STANDARD if base is None else base)
    for name, values in (overrides or {}).items():
        if name not in settings:
            raise ZSBenchError(f"unknown AutoAttack component {name!r}; components: {', '.join(settings)}")
        unknown = set(values) - set(settings[name])
        if unknown:
            raise ZSBenchError(
                f"unknown {name} setting(s) {', '.join(sorted(unknown))}; known: {', '.join(settings[name])}"
            )
        for key, value in values.items():
            allowed = SUPPORTED_VALUES.get((name, key))
            if allowed is not None and value not in allowed:
                raise ZSBenchError(
                    f"{name} cannot run with {key}={value!r} here; supported: {', '.join(map(repr, allowed))}"
                )
        settings[name].update(values)
    return settings


@contextlib.contextmanager
def _keep_rng(device: torch.device):
    """Save and restore the global torch generators that the torchattacks and official code reseed."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def _outside_ball(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return size > eps + 1e-6


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _make_fab(model: nn.Module, norm: str, eps: float, n_classes: int, s: dict):
    import torchattacks  # torchattacks: importing it takes seconds, so only when FAB-T runs

    fab = torchattacks.FAB(
        model,
        norm=_NORMS[norm],
        eps=eps,
        steps=s["n_iter"],
        n_restarts=s["n_restarts"],
        alpha_max=s["alpha_max"],
        eta=s["eta"],
        beta=s["beta"],
        verbose=False,
        seed=0,
        multi_targeted=True,
        n_classes=n_classes,
    )
    fab.n_target_classes = min(s["n_target_classes"], n_classes - 1)
    return fab


def _make_square(model: nn.Module, norm: str, eps: float, s: dict):
    import torchattacks  # torchattacks: importing it takes seconds, so only when the L2 Square runs

    return torchattacks.Square(
        model,
        norm=_NORMS[norm],
        eps=eps,
        n_queries=s["n_queries"],
        n_restarts=s["n_restarts"],
        p_init=s["p_init"],
        loss=s["loss"],
        resc_schedule=s["resc_schedule"],
        seed=0,
        verbose=False,
    )


def _square_seed(seed: int) -> int:
    return int(stream_seeds(torch.tensor([seed]), _SQUARE_STREAM)[0]) % (1 << 32)


# ------------------------------------------------------------------------------------------ the two implementations
def _run_components(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    t: Threat,
    seeds: torch.Tensor,
    clean: torch.Tensor,
    n_classes: int,
    settings: dict[str, dict],
    entry: dict,
    adv: torch.Tensor | None = None,
    order: tuple[str, ...] = ORDER,
) -> torch.Tensor:
    """The cascade of the components ``order``; with ``adv`` (a copy of x), the image that fooled the model is written
    there for every point a component breaks (APGD also writes its last iterate for the points it leaves robust)."""
    robust = clean.clone()
    for name in order:
        s = settings[name]
        if n_classes < MIN_CLASSES[name]:
            entry["skipped"][name] = f"{n_classes} classes: {_WHY[name]}"
            continue
        entry["ran"].append(name)
        if "n_target_classes" in s:
            entry["n_target_classes"][name] = min(s["n_target_classes"], n_classes - 1)
        idx = robust.nonzero().flatten()
        if len(idx):
            if name in ("apgd-ce", "apgd-t"):  # every setting is an argument: none can be recorded without running
                component = apgd_ce if name == "apgd-ce" else apgd_targeted
                robust = component(model, x, y, seeds, norm=t.norm, eps=t.eps, robust=robust, adv=adv, **s)
            elif name == "fab-t":
                fab = _make_fab(model, t.norm, t.eps, n_classes, s)
                xr, yr = x[idx], y[idx]
                with _keep_rng(x.device):
                    found = fab.perturb(xr, yr)
                robust[idx] = (_predict(model, found) == yr) | _outside_ball(found, xr, t.eps, t.norm)
                if adv is not None:
                    broken = ~robust[idx]
                    adv[idx[broken]] = found[broken]
            elif t.norm == "linf":  # batched, one random stream per image (the numbers of a one-image run)
                xr, yr = x[idx], y[idx]
                sq_seeds = [_square_seed(int(seeds[i])) for i in idx.tolist()]
                found = square_linf(model, xr, yr, t.eps, sq_seeds, **s)
                robust[idx] = (_predict(model, found) == yr) | _outside_ball(found, xr, t.eps, t.norm)
                if adv is not None:
                    broken = ~robust[idx]
                    adv[idx[broken]] = found[broken]
            else:  # L2: torchattacks.Square, one image at a time (its batched run shares squares across the batch)
                square = _make_square(model, t.norm, t.eps, s)
                with _keep_rng(x.device):
                    for i in idx.tolist():
                        square.seed = _square_seed(int(seeds[i]))
                        xi, yi = x[i : i + 1], y[i : i + 1]
                        found = square.perturb(xi, yi)
                        robust[i] = bool(((_predict(model, found) == yi) | _outside_ball(found, xi, t.eps, t.norm))[0])
                        if adv is not None and not robust[i]:
                            adv[i] = found[0]
        entry["robust"][name] = int(robust.sum())
        entry["masks"][name] = robust.clone()
    return robust


def _run_official(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    t: Threat,
    seeds: torch.Tensor,
    clean: torch.Tensor,
    n_classes: int,
    entry: dict,
    adv: torch.Tensor | None = None,
) -> torch.Tensor:
    try:
        module = importlib.import_module("autoattack")  # fra31/auto-attack: optional, installed from git
        cls = module.AutoAttack
    except Exception as exc:  # noqa: BLE001  (any failure of a third-party import becomes one line)
        raise ZSBenchError(
            f"the installed autoattack package does not import ({type(exc).__name__}: {exc}); fix or uninstall it "
            "(without it the torchattacks components run)"
        ) from None
    seed = int(seeds[0])
    aa = cls(model, norm=_NORMS[t.norm], eps=t.eps, version="standard", device=x.device, verbose=False, seed=seed)
    n_targets = min(N_TARGET_CLASSES, n_classes - 1)
    aa.apgd_targeted.n_target_classes = n_targets
    aa.fab.n_target_classes = n_targets
    if n_classes < MIN_CLASSES_TARGETED_DLR:
        aa.attacks_to_run = [a for a in aa.attacks_to_run if a != "apgd-t"]
        entry["skipped"]["apgd-t"] = f"{n_classes} classes: {_WHY['apgd-t']}"
    aa.seed = seed
    entry["ran"].extend(aa.attacks_to_run)
    entry["n_target_classes"].update({a: n_targets for a in ("apgd-t", "fab-t") if a in aa.attacks_to_run})
    entry["seed"] = seed
    bs = min(OFFICIAL_FP16_BS, len(x)) if t.precision == "fp16" else len(x)
    entry["batch_sizes"] = [min(bs, len(x) - start) for start in range(0, len(x), bs)]
    with _keep_rng(x.device):
        x_adv = aa.run_standard_evaluation(x, y, bs=bs)
    if isinstance(x_adv, tuple):
        x_adv = x_adv[0]
    x_adv = x_adv.to(x.device).float()
    inside = ~_outside_ball(x_adv, x, t.eps, t.norm)
    robust = clean & ((_predict(model, x_adv) == y) | ~inside)
    if adv is not None:
        use = clean & inside  # the others keep the clean image: misclassified, or robust (x_adv left the ball)
        adv[use] = x_adv[use]
    entry["robust"]["autoattack"] = int(robust.sum())
    entry["masks"]["autoattack"] = robust.clone()
    return robust


def _accumulate(report: dict, slug: str, entry: dict) -> None:
    old = report.get(slug)
    if old is None:
        report[slug] = entry
        return
    old["n"] += entry["n"]
    for k, v in entry["masks"].items():
        old["masks"][k] = torch.cat([old["masks"][k], v]) if k in old["masks"] else v
    for k, v in entry["robust"].items():
        old["robust"][k] = old["robust"].get(k, 0) + v
    if "batch_sizes" in entry:
        old["batch_sizes"] = old.get("batch_sizes", []) + entry["batch_sizes"]
    old["ran"] += [c for c in entry["ran"] if c not in old["ran"]]
    old["skipped"].update(entry["skipped"])
    old["n_target_classes"].update(entry["n_target_classes"])


def _autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: list[Threat],
    seeds: torch.Tensor,
    report: dict | None,
    implementation: str | None,
    settings: dict | None,
    track: bool,
    pair: bool = False,
) -> tuple[dict[Threat, torch.Tensor], dict[Threat, torch.Tensor]]:
    """``run_autoattack``; with ``track`` also the adversarial images per threat; with ``pair`` the APGD-CE + APGD-T
    cascade of ``apgd-ce+t`` (``robustbench_zs.attacks.apgd`` whatever is installed) instead of standard AutoAttack."""
    if pair:
        impl, order = APGD_PAIR_IMPLEMENTATION, APGD_ORDER
    else:
        impl, order = implementation or registered_settings()["implementation"], ORDER
    if not pair and impl not in IMPLEMENTATIONS:
        describe(impl)  # raises the one-line error
    if impl == OFFICIAL and settings:
        raise ZSBenchError("setting overrides apply to the torchattacks components only, not to fra31/auto-attack")
    merged = _merge(settings, _apgd_pair(STANDARD) if pair else None)
    require_precision(threats, APGD_PAIR_PRECISIONS if pair else PRECISIONS)
    seeds = torch.as_tensor(seeds).cpu()
    out: dict[Threat, torch.Tensor] = {}
    advs: dict[Threat, torch.Tensor] = {}
    last: dict = {}
    if len(x) == 0:
        empty = torch.zeros(0, dtype=torch.bool, device=x.device)
        return {t: empty.clone() for t in threats}, {t: x.float().clone() for t in threats}
    with eval_mode_no_param_grad(model), attack_autocast(x.device, "fp32"):
        x = x.float()
        forwards: dict[str, nn.Module] = {}
        cleans: dict[str, torch.Tensor] = {}
        for p in dict.fromkeys(t.precision for t in threats):  # the clean check of each precision, in its forward
            forwards[p] = _forward_for(model, p)
            with torch.no_grad():
                logits = forwards[p](x)
            n_classes = int(logits.shape[1])
            cleans[p] = logits.argmax(1) == y
        for t in threats:
            fwd, clean = forwards[t.precision], cleans[t.precision]
            entry = {
                "implementation": impl,
                "n_classes": n_classes,
                "n": len(x),
                "ran": [],
                "skipped": {},
                "n_target_classes": {},
                "robust": {"clean": int(clean.sum())},
                "masks": {},
            }
            if t.precision != "fp32":
                entry["precision"] = t.precision
                entry["precision_detail"] = PRECISION_DETAIL[t.precision]
            if impl != OFFICIAL:
                entry["settings"] = copy.deepcopy(merged)
            adv = x.clone() if track else None
            if t.eps == 0:
                entry["skipped"] = dict.fromkeys(order, "eps = 0: the ball is the clean image")
                out[t] = clean.clone()
            elif n_classes < 2:
                entry["skipped"] = {name: f"{n_classes} class: {_WHY[name]}" for name in order}
                out[t] = clean.clone()
            elif impl == OFFICIAL:
                out[t] = _run_official(fwd, x, y, t, seeds, clean, n_classes, entry, adv)
            else:
                out[t] = _run_components(fwd, x, y, t, seeds, clean, n_classes, merged, entry, adv, order)
            if adv is not None:
                advs[t] = adv
            last[t.slug] = entry
            if report is not None:
                _accumulate(report, t.slug, copy.deepcopy(entry))
    run_autoattack.last_report = last
    return out, advs


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: list[Threat],
    seeds: torch.Tensor,
    *,
    report: dict | None = None,
    implementation: str | None = None,
    settings: dict | None = None,
) -> dict[Threat, torch.Tensor]:
    """Standard AutoAttack at every threat (its norm and eps) for one batch; returns the per-image robust masks.

    Args:
        seeds: one int per image (random starts, Square); the official package gets the first one.
        report: filled per threat slug with ``implementation``, ``n_classes``, ``n``, ``ran`` (components, in order),
            ``skipped`` (component -> reason), ``n_target_classes`` (as capped for this classifier) and ``robust``
            (points robust: clean, then after each component; ``autoattack`` only, for the official package) and
            ``masks`` (the same, per image: component -> bool tensor, robust after it and every earlier one); the
            official package also gives ``seed`` and ``batch_sizes`` (the ``bs`` of each call). Counts add up and
            masks are concatenated when the same dict is passed for several batches. A threat of another precision
            than fp32 adds ``precision`` and ``precision_detail`` (what it means for AutoAttack). The last call's
            report is also ``run_autoattack.last_report``.
        implementation: ``fra31/auto-attack`` or ``torchattacks components``; default: the registered one.
        settings: per-component overrides of ``STANDARD`` (torchattacks components only), e.g.
            ``{"square": {"n_queries": 100}}``, for quick looks and tests; records use the standard values. Each value
            is passed to the component that runs; values it cannot run (another APGD loss) are refused.
    """
    return _autoattack(model, x, y, threats, seeds, report, implementation, settings, track=False)[0]


def perturb_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: Threat,
    seeds: torch.Tensor,
    *,
    implementation: str | None = None,
    settings: dict | None = None,
) -> torch.Tensor:
    """``AutoAttack(threat, implementation=..., settings=...).perturb(model, x, y, seeds)``."""
    return AutoAttack(threat, implementation=implementation, settings=settings).perturb(model, x, y, seeds)


class AutoAttack(Attack):
    """Standard AutoAttack at one threat.

    Args:
        implementation, settings: as in ``run_autoattack``.
    """

    def __init__(self, threat: Threat, *, implementation: str | None = None, settings: dict | None = None) -> None:
        super().__init__(threat)
        self.implementation = implementation
        self.settings = settings

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """The same cascade and seeds as ``run_autoattack``. Per image: the image of the component that broke it; the
        clean image where it is misclassified already; for the points left robust, APGD-T's (else APGD-CE's) last
        iterate, or the clean image when no APGD ran on it (the official package: its returned image where that lies
        in the ball)."""
        t = self.threat
        return _autoattack(model, x, y, [t], seeds, None, self.implementation, self.settings, track=True)[1][t]


run_autoattack.last_report = {}

ATTACKS.add(
    "autoattack",
    AttackEntry(
        name="autoattack",
        description="standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square (fra31/auto-attack if installed, "
        "else torchattacks components at the official settings); steps and step size are not used (fp32; fp16 as "
        "the official PMG-AFT code)",
        run=run_autoattack,
        attack=AutoAttack,
        fixed_settings=AUTOATTACK_SETTINGS,
        display="AutoAttack",
        default_steps=None,
        uses_step_size=False,
        reports=True,
        precisions=PRECISIONS,
        precision_notes=PRECISION_DETAIL,
    ),
)


def run_apgd_pair(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: list[Threat],
    seeds: torch.Tensor,
    *,
    report: dict | None = None,
    settings: dict | None = None,
) -> dict[Threat, torch.Tensor]:
    """``apgd-ce+t`` at every threat for one batch: APGD-CE (5 restarts), then APGD-T on the points still robust,
    as AutoAttack's ``version='custom'`` with ``attacks_to_run=['apgd-ce', 'apgd-t']`` (RobustVLM's zero-shot
    evaluation). A point is robust only if it survives both; with fewer than 4 classes APGD-T is skipped (recorded).

    Args:
        report, settings: as in ``run_autoattack`` (``settings`` overrides ``apgd-ce`` and ``apgd-t`` only).
    """
    return _autoattack(model, x, y, threats, seeds, report, None, settings, track=False, pair=True)[0]


class APGDPair(AutoAttack):
    """``apgd-ce+t`` at one threat.

    Args:
        settings: as in ``run_apgd_pair``.
    """

    def __init__(self, threat: Threat, *, settings: dict | None = None) -> None:
        super().__init__(threat, settings=settings)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """As ``AutoAttack.perturb``, for the two APGD components."""
        t = self.threat
        return _autoattack(model, x, y, [t], seeds, None, None, self.settings, track=True, pair=True)[1][t]


ATTACKS.add(
    APGD_PAIR,
    AttackEntry(
        name=APGD_PAIR,
        description="APGD-CE (5 restarts) then APGD-T (9 targets) on the points still robust, 100 iterations each: "
        "AutoAttack version='custom' as RobustVLM's zero-shot evaluation (the fast tier's attack; fp32)",
        run=run_apgd_pair,
        attack=APGDPair,
        fixed_settings=APGD_PAIR_SETTINGS,
        display="APGD-CE+T",
        default_steps=None,
        uses_step_size=False,
        reports=True,
        precisions=APGD_PAIR_PRECISIONS,
    ),
)
