"""The cells a PMG-AFT target needs, and the checkpoints behind them.

:func:`plan` lists one :class:`Cell` per (row, dataset, metric) of a target, each naming the run that produces it:
method, option overrides, training set, dataset and threat (the paper's PGD-10 with steps of 1/255, or standard
AutoAttack, at the row's eps and the profile's attack precision). An average needs all 16 datasets of its row; rows
whose settings the paper lost have no cells. :func:`find_checkpoint` finds the checkpoint folder a trained row needs
by its ``meta.json`` (method config, training set, training eps and the recipe fields given as options).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..attacks import ATTACKS, Threat
from ..engine.variants import _split_options, find_checkpoints, wanted_training
from ..errors import ZSBenchError
from ..methods import METHODS, Recipe
from ..models import ModelSpec
from ..profiles import Profile, TrainProfile, get_profile, profile_family
from .targets import AVERAGE, get_target, paper_datasets

#: Option values of the form ``@checkpoint:METHOD`` stand for the folder of that method's checkpoint for the same
#: backbone, training set and default options (fig5's interpolation needs the FT-TeCoA weights as ``theta1``).
CHECKPOINT_REF = "@checkpoint:"


@dataclass(frozen=True)
class Cell:
    """One number a target needs: a row's metric on one dataset, and the run that produces it.

    Attributes:
        target, row: where the number goes.
        method: our method id; ``options``: its ``(key, value)`` overrides (config fields and recipe fields).
        train_dataset: the training set of the target (ignored for methods that train nothing).
        dataset: our dataset id.
        metric: ``clean`` or ``robust``.
        threat: the attack of a robust cell (the clean ``Threat()`` for a clean one).
    """

    target: str
    row: str
    method: str
    options: tuple[tuple[str, str], ...]
    train_dataset: str
    dataset: str
    metric: str
    threat: object  # attacks.Threat (imported lazily: this module imports without torch's attack stack)

    @property
    def variant(self) -> tuple:
        """What identifies the weights: method, options and training set."""
        return (self.method, self.options, self.train_dataset)

    def clean(self) -> Cell:
        """The clean cell of the same variant and dataset (a robust run always evaluates it first)."""
        return dataclasses.replace(self, metric="clean", threat=Threat())


def attack_precision(attack: str, profile: Profile) -> str:
    """The profile's attack precision where the attack supports it, else fp32 (PGD and AutoAttack run the paper
    profile's fp16 as the official code did; an attack without fp16 would run fp32 and its records say so)."""
    supported = getattr(ATTACKS.get(attack), "precisions", ("fp32",))
    return profile.attack_precision if profile.attack_precision in supported else "fp32"


def paper_threat(attack: str, eps_255: float, profile: Profile):
    """The paper's test attack at ``eps_255``/255: PGD-10 with steps of 1/255, or standard AutoAttack (L-inf)."""
    eps = eps_255 / 255
    if attack == "pgd10":
        return Threat("pgd", "linf", eps, 10, 1 / 255, precision=attack_precision("pgd", profile))
    if attack == "autoattack":
        return Threat("autoattack", "linf", eps, 0, 0.0, precision=attack_precision("autoattack", profile))
    raise ZSBenchError(f"unknown paper attack {attack!r}")


def resolve_profile(profile: str | Profile, paper_subsample: bool | None = None) -> Profile:
    """The named profile (or the one given), with the paper subsample set where ``paper_subsample`` is not None.

    As with ``zsbench run --paper-subsample``, a profile with the subsample changed is named ``custom`` (its knobs
    tell it apart), so records of either command share one identity.
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    if paper_subsample is not None and paper_subsample != prof.paper_subsample:
        prof = prof.with_overrides(paper_subsample=paper_subsample)
    return prof


def official(profile: Profile) -> bool:
    """Whether rows take the official code's method options (:attr:`Row.official_options`): under ``paper``, with or
    without the paper subsample."""
    return profile_family(profile) == "paper"


def plan(target: str, profile: str | Profile = "paper") -> list[Cell]:
    """Every cell ``target`` needs under ``profile``, in the paper's row and column order.

    Rows the paper gives without their settings have no cells (they are never run). Average columns expand to the
    16 datasets of their metric. Under the ``paper`` profile each row's options include its official ones (the
    options of the code behind the paper's numbers).
    """
    t = get_target(target)
    prof = resolve_profile(profile)
    cells: dict[Cell, None] = {}
    for row in t.rows:
        if not row.reproducible:
            continue
        threat = paper_threat(t.attack, row.eps_255, prof)
        for col in t.columns:
            datasets = [d.id for d in paper_datasets()] if col.dataset == AVERAGE else [col.dataset]
            for ds in datasets:
                cell = Cell(
                    target=t.id,
                    row=row.key,
                    method=row.method,
                    options=row.options_for(official(prof)),
                    train_dataset=t.train_dataset,
                    dataset=ds,
                    metric=col.metric,
                    threat=threat if col.metric == "robust" else Threat(),
                )
                cells[cell] = None
    return list(cells)


def split_options(method: str, options: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Method options -> (config fields, recipe fields); unknown keys are a one-line error."""
    cls = METHODS.get(method)
    config_fields = {f.name for f in dataclasses.fields(cls.Config)}
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    config, recipe = {}, {}
    for k, v in options.items():
        if k in config_fields:
            config[k] = v
        elif k in recipe_fields:
            recipe[k] = v
        else:
            raise ZSBenchError(f"{method} has no option {k!r}")
    return config, recipe


def same_value(a, b) -> bool:
    """Config/recipe values compare as numbers where both are numbers, checkpoint paths by their last component."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        pass
    if isinstance(a, str) and isinstance(b, str):
        return a == b or (bool(a) and bool(b) and Path(a).name == Path(b).name)
    return a == b


def same_config(have: dict, want: dict) -> bool:
    """The same keys, and equal values by :func:`same_value`."""
    return set(have) == set(want) and all(same_value(have[k], want[k]) for k in want)


def expected_train_eps(method: str, recipe: dict[str, str]) -> float:
    """The training eps (1/255) of a run with these recipe options: the option, else the method's recipe default."""
    return float(recipe.get("train_eps_255", METHODS.get(method).recipe.train_eps_255))


def find_checkpoint(
    models_dir: Path,
    method: str,
    options: dict[str, str],
    train_dataset: str,
    arch: str,
    pretrained: str,
    train_profile: TrainProfile | None = None,
) -> Path | None:
    """The newest complete checkpoint of ``method`` with these options, training set, training eps and backbone
    (and training knobs, given ``train_profile``: the profile's, as they train this method).

    The same rule ``zsbench run`` uses to pick a checkpoint (``engine.variants.find_checkpoints``), with the
    training eps pinned to the row's (the option, else the method's recipe default), so the plan and the run agree.
    """
    cls = METHODS.get(method)
    if cls.trains == "nothing":
        return None
    config_opts, recipe_opts = _split_options(cls, options)
    config_opts, knobs = wanted_training(cls, train_profile, config_opts)
    recipe = {"train_eps_255": expected_train_eps(method, options), **recipe_opts}
    found = find_checkpoints(
        Path(models_dir),
        method,
        ModelSpec(arch, pretrained),
        train_dataset=train_dataset,
        config=cls.Config.from_overrides(config_opts).to_dict(),
        recipe=recipe,
        train_knobs=knobs,
    )
    return found[0] if found else None


def resolve_options(
    options: Iterable[tuple[str, str]],
    models_dir: Path,
    train_dataset: str,
    arch: str,
    pretrained: str,
    train_profile: TrainProfile | None = None,
) -> dict[str, str] | None:
    """Options with ``@checkpoint:METHOD`` values replaced by that checkpoint's folder; None if one is missing."""
    out = {}
    for k, v in options:
        if isinstance(v, str) and v.startswith(CHECKPOINT_REF):
            ref = v[len(CHECKPOINT_REF) :]
            path = find_checkpoint(models_dir, ref, {}, train_dataset, arch, pretrained, train_profile)
            if path is None:
                return None
            v = str(path)
        out[k] = v
    return out


def options_text(options: Iterable[tuple[str, str]]) -> str:
    """``beta=0, distance=kl`` (``—`` for none), as ``--set`` would take them."""
    return ", ".join(f"{k}={v}" for k, v in options) or "—"
