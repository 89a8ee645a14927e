"""Which record supplies each cell of a plan.

A record fits a cell when it has the same method, method config (defaults plus the row's options), training set,
training eps and training knobs (``record.model["training"]``: the knobs of the profile's training profile, as
they train the method; a foreign checkpoint, whose training is unknown, never fits a trained row), the same base
model, dataset, attack, eps and steps (and, for an attack whose results depend on the batch size, such as the paper
profile's fp16 attacks, the same ``attack_batch_size``), and was measured under the requested profile (its name, or
exactly its knobs: see :func:`profile_matches`) with the same paper-subsample setting. Of several fitting records
the newest that covers the requested images wins (the whole split, ``--n N`` or the paper's subsample); a record on
fewer images is still returned, marked incomplete, so the table can show it with its "n of N" while its run stays
planned.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..engine.variants import wanted_training
from ..methods import METHODS
from ..profiles import Profile, TrainProfile, train_profile_for
from ..provenance import default_models_dir
from ..results import Record, RecordStore
from .plan import (
    Cell,
    attack_precision,
    expected_train_eps,
    resolve_options,
    resolve_profile,
    same_config,
    same_value,
    split_options,
)


@dataclass(frozen=True)
class Found:
    """The record that supplies a cell.

    Attributes:
        accuracy: 0..1; ``ci95``: its Wilson interval.
        n, n_total: images evaluated, images in the split.
        complete: it covers the requested images (the whole split, ``--n N`` or the paper's subsample); an
            incomplete record is shown but its run is still planned.
        others: further records of the same cell that were passed over (older, or on other images).
    """

    path: Path
    accuracy: float
    ci95: tuple[float, float]
    n: int
    n_total: int
    created_utc: str
    complete: bool
    checkpoint_name: str | None
    wall_time_s: float | None
    others: int = 0

    @classmethod
    def of(cls, record: Record, complete: bool, others: int = 0) -> Found:
        """What a cell shows of ``record`` (read from a file: its ``path`` is set)."""
        return cls(
            path=record.path,
            accuracy=record.accuracy,
            ci95=record.ci95,
            n=record.n,
            n_total=int(record.dataset["n_total"]),
            created_utc=record.created_utc,
            complete=complete,
            checkpoint_name=record.model.get("checkpoint_name"),
            wall_time_s=record.run.get("wall_time_s"),
            others=others,
        )


def _record_knobs(record: Record, attack_name: str | None) -> dict:
    prof = record.profile
    pre = prof.get("preprocess")
    precision = prof.get("attack_precision")
    if precision is None and attack_name not in (None, "clean"):
        precision = record.attack.get("precision", "fp32")  # records from before the knob was stored
    return {
        "normalization": prof.get("normalization"),
        "logit_scale": str(prof.get("logit_scale")),
        "prompts": prof.get("prompts"),
        "preprocess": pre.get("profile") if isinstance(pre, dict) else pre,
        "paper_subsample": bool(prof.get("paper_subsample", False)),
        "attack_precision": precision,
    }


def profile_matches(record: Record, profile: Profile) -> bool:
    """True if ``record`` was measured under ``profile``: the same named profile, or exactly its knobs.

    The knob comparison admits records named ``custom`` whose knobs equal the requested ones (a named profile with
    the paper subsample, say), and records written before profiles had names; a ``custom`` request is matched by its
    knobs only. A clean record has no attack precision; an attack the profile's precision does not support
    (AutoAttack) is compared with the precision it falls back to.
    """
    prof = record.profile
    subsample = bool(prof.get("paper_subsample", False))
    if profile.name != "custom" and prof.get("name") == profile.name and subsample == profile.paper_subsample:
        return True
    attack = record.attack.get("name")
    have = _record_knobs(record, attack)
    want = profile.knobs()
    want["logit_scale"] = str(want["logit_scale"])
    if attack in (None, "clean"):
        have.pop("attack_precision")
        want.pop("attack_precision")
    else:
        want["attack_precision"] = attack_precision(attack, profile)
        have["attack_precision"] = record.attack.get("precision", have["attack_precision"])
    return have == want


def _attack_matches(record: Record, threat, batch_size: int | None = None) -> bool:
    """Same attack, norm, eps and steps; a record keyed on its attack batch size (fp16, the official AutoAttack
    package) fits only the batch size asked for (None: any)."""
    a = record.attack
    if threat.is_clean:
        return a.get("name") == "clean"
    return (
        a.get("name") == threat.name
        and a.get("norm") == threat.norm
        and same_value(a.get("eps_255", a.get("eps", -1) * 255), threat.eps * 255)
        and int(a.get("steps", -1)) == threat.steps
        and (batch_size is None or a.get("attack_batch_size") in (None, batch_size))
    )


class _Expectation:
    """What a cell's record must hold: the method config and, for trained methods, training set and eps."""

    def __init__(
        self, cell: Cell, models_dir: Path | None, arch: str, pretrained: str, train_profile: TrainProfile | None
    ) -> None:
        cls = METHODS.get(cell.method)
        self.trains = cls.trains != "nothing"
        self.config: dict | None = None
        self.train_eps = 0.0
        self.knobs: dict | None = None
        folder = Path(models_dir) if models_dir is not None else default_models_dir()
        options = resolve_options(cell.options, folder, cell.train_dataset, arch, pretrained, train_profile)
        if options is None:
            return  # its checkpoint (e.g. interpolation's theta1) does not exist yet: no record can match
        config_opts, recipe_opts = split_options(cell.method, options)
        if self.trains:
            config_opts, self.knobs = wanted_training(cls, train_profile, config_opts)
        self.config = cls.Config.from_overrides(config_opts).to_dict()
        self.train_eps = expected_train_eps(cell.method, recipe_opts)

    def fits(self, record: Record, cell: Cell) -> bool:
        if self.config is None:
            return False
        model = record.model
        if not same_config(model.get("method_config") or {}, self.config):
            return False
        if not self.trains:
            return True
        training = model.get("training") or {}  # None: a foreign checkpoint, whose training is unknown
        if self.knobs is not None and not _same_knobs(training.get("knobs"), self.knobs):
            return False
        return training.get("train_dataset") == cell.train_dataset and same_value(
            training.get("train_eps_255"), self.train_eps
        )


def _same_knobs(have: dict | None, want: dict) -> bool:
    """Training knobs equal, the profile's name aside (a record without them, from before profiles, never fits)."""
    if not isinstance(have, dict):
        return False
    return {k: str(v) for k, v in have.items() if k != "name"} == {k: str(v) for k, v in want.items() if k != "name"}


def _complete(n: int, n_total: int, want_n: int | None, paper_subsample: bool) -> bool:
    if paper_subsample:
        return True
    if want_n is None:
        return n >= n_total
    return n >= min(want_n, n_total)


def load_records(out_dir: Path) -> list[Record]:
    """Every valid record under ``out_dir``, each with its path (read once, then shared by :func:`match` and the cost
    estimate)."""
    return list(RecordStore(out_dir).iter_records())


def match(
    cells: Iterable[Cell],
    out_dir: Path,
    profile: str | Profile = "paper",
    *,
    arch: str = "ViT-B-32",
    pretrained: str = "openai",
    models_dir: Path | None = None,
    n: int | None = None,
    paper_subsample: bool | None = None,
    records: list[Record] | None = None,
    batch_size: int | None = None,
    check_training: bool = True,
) -> dict[Cell, Found | None]:
    """The record of each cell under ``out_dir`` (None where there is none); see the module docstring for the rules.

    Args:
        cells: from :func:`plan`.
        profile: the profile name (or object) the records must have been measured under.
        arch, pretrained: the base model of the records (a trained method's backbone before fine-tuning).
        models_dir: where ``@checkpoint:`` options are resolved (fig5's interpolation).
        n: the requested images per dataset (None: the whole split); a record on fewer is shown but not complete.
        paper_subsample: True or False overrides the profile's knob (the paper's every-20th-batch subsample).
        records: :func:`load_records` of ``out_dir``, when the caller has them already.
        batch_size: the evaluation batch size asked for: records keyed on another attack batch size (fp16 attacks,
            the official AutoAttack package) do not fit; None: any.
        check_training: False lets records of checkpoints trained with other training knobs fit (to find them and
            say so; a table never uses them).
    """
    prof = resolve_profile(profile, paper_subsample)
    train_prof = train_profile_for(prof)
    index: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in load_records(Path(out_dir)) if records is None else records:
        index[(record.method, record.dataset["id"])].append(record)
    expectations: dict[tuple, _Expectation] = {}
    out: dict[Cell, Found | None] = {}
    for cell in cells:
        if cell.variant not in expectations:
            expectations[cell.variant] = _Expectation(
                cell, models_dir, arch, pretrained, train_prof if check_training else None
            )
        want = expectations[cell.variant]
        fits = [
            r
            for r in index.get((cell.method, cell.dataset), ())
            if r.model.get("arch") == arch
            and r.model.get("pretrained") == pretrained
            and _attack_matches(r, cell.threat, batch_size)
            and profile_matches(r, prof)
            and want.fits(r, cell)
        ]
        if not fits:
            out[cell] = None
            continue
        done = [r for r in fits if _complete(r.n, r.dataset["n_total"], n, prof.paper_subsample)]
        r = max(done or fits, key=lambda f: (f.created_utc, str(f.path)))
        out[cell] = Found.of(r, complete=bool(done), others=len(fits) - 1)
    return out


def missing_cells(matches: dict[Cell, Found | None]) -> list[Cell]:
    """Cells whose run is still to do: no record, or one on fewer images than requested."""
    return [c for c, f in matches.items() if f is None or not f.complete]
