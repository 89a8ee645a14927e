"""From ``--methods`` to evaluable variants: which weights each method is evaluated with.

- ``clip`` (and any method that trains nothing and mixes nothing): the backbone as loaded.
- a trained method: ``--checkpoint METHOD=PATH`` (our checkpoint folder, or a foreign file: the official PMG-AFT /
  TeCoA ``vision_encoder_state_dict`` files, RobustVLM's open_clip visual state dicts), else the one complete
  checkpoint of that method for this backbone under the models folder (trained with the run's training profile, when
  it has one), else it is trained first with the method's recipe and that profile (``--set METHOD.key=value`` sets
  recipe fields and method options).
- ``interpolation``: one variant per value of a comma-separated ``--set interpolation.alpha=0,0.5,1``.
- a test-time defense (``ttc``, ``clipure``): one variant per evaluation asked for (``--defense-eval``): ``adaptive``
  (labelled as the method) and ``non_adaptive`` (labelled ``METHOD (non-adaptive)``, flagged in the leaderboard); see
  ``robustbench_zs.methods.defense``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ZSBenchError
from ..methods import METHODS, Method, Recipe
from ..methods.base import recipe_value
from ..methods.defense import DEFENSE_EVALUATIONS, is_defense
from ..models import LoadedModel, ModelSpec, load_model
from ..paths import utf8
from ..profiles import TrainProfile, training_knobs
from ..tensors import check_state_tensors
from ..train.engine import effective_profile, method_options
from ..weights import CheckpointRef, apply_visual_state, load_checkpoint, load_visual_state

RECIPE_FIELDS = {f.name for f in dataclasses.fields(Recipe)}


@dataclass
class MethodVariant:
    """One row of the leaderboard: a method, its options and its weights."""

    method: Method
    label: str
    identity: dict
    load: Callable[[torch.device], tuple[LoadedModel, nn.Module]] = field(repr=False)
    model_label: str = ""
    training: dict | None = None  # how the checkpoint was trained (our folders' meta.json); not part of the key
    # a test-time defense's evaluation (``DefenseMethod.evaluation_block``): keys its robust records; None otherwise
    evaluation: dict | None = None
    base_label: str = ""  # the label of its clean records, shared by its evaluations ("" : ``label``)

    @property
    def clean_label(self) -> str:
        return self.base_label or self.label

    @property
    def key_identity(self) -> dict:
        """What of :attr:`identity` keys the records: all of it but names and paths, which change no number.

        A checkpoint's folder name (``checkpoint_name``) is recorded and shown but not keyed, and the method's
        ``weights_options`` (interpolation's ``theta0``/``theta1`` paths) are keyed by the hashes its
        ``weights_identity`` gives under the same names: a renamed or moved copy of the same weights reuses its
        records instead of computing them again.
        """
        return type(self.method).without_weight_paths({k: v for k, v in self.identity.items() if k not in DISPLAY_ONLY})


#: Fields of a variant's identity that name its weights without changing them: recorded, never keyed.
DISPLAY_ONLY = ("checkpoint_name",)


NON_ADAPTIVE_SUFFIX = " (non-adaptive)"


def defense_variants(variant: MethodVariant, evaluations: tuple[str, ...], eot_samples: int | None) -> list:
    """A test-time defense's variant once per evaluation in ``evaluations`` (``adaptive``, ``non_adaptive``)."""
    cls = type(variant.method)
    out = []
    for mode in evaluations:
        block = cls.evaluation_block(mode, eot_samples)
        label = variant.label
        if mode == "non_adaptive":
            label += NON_ADAPTIVE_SUFFIX
        elif eot_samples is not None and block["eot_samples"] != cls.eot_samples:
            label += f" (EOT-{block['eot_samples']})"
        out.append(dataclasses.replace(variant, label=label, evaluation=block, base_label=variant.label))
    return out


def training_summary(meta: dict) -> dict:
    """What a record says about the training run behind a checkpoint folder (from its ``meta.json``)."""
    recipe = meta.get("recipe") or {}
    return {
        "knobs": training_knobs(meta),
        "knobs_unused": list(meta.get("train_knobs_unused") or []),
        "train_dataset": meta.get("train_dataset"),
        "train_eps_255": recipe.get("train_eps_255"),
        "train_steps": recipe.get("train_steps"),
        "epochs": recipe.get("epochs"),
        "steps": meta.get("steps"),
        "precision": meta.get("precision"),
        "seed": meta.get("seed"),
        "recipe": recipe,
    }


def _split_options(method_cls: type[Method], options: dict[str, str]) -> tuple[dict[str, str], dict]:
    config_fields = {f.name for f in dataclasses.fields(method_cls.Config)}
    config, recipe = {}, {}
    for k, v in options.items():
        if k in config_fields:
            config[k] = v
        elif k in RECIPE_FIELDS:
            try:
                recipe[k] = recipe_value(k, v)
            except ValueError as e:
                raise ZSBenchError(f"--set {method_cls.id}.{k}={v}: {e}") from None
        else:
            known = ", ".join(sorted(config_fields | RECIPE_FIELDS))
            raise ZSBenchError(f"{method_cls.id} has no option {k!r}; options: {known}")
    return config, recipe


def _base_loader(model: ModelSpec, method: Method):
    def load(device: torch.device) -> tuple[LoadedModel, nn.Module]:
        loaded = load_model(model, device)
        method.check_model(loaded.model, model.arch)
        return loaded, method.build_encoder(loaded.model)

    return load


def find_checkpoints(
    models_dir: Path,
    method_id: str,
    model: ModelSpec,
    *,
    train_dataset: str | None = None,
    config: dict | None = None,
    recipe: dict | None = None,
    train_knobs: dict | None = None,
) -> list[Path]:
    """Complete checkpoints of ``method_id`` trained from ``model`` under ``models_dir``, newest first.

    Args:
        train_dataset: only checkpoints trained on this dataset (any when None).
        config: only checkpoints whose method config equals this one (``Config.to_dict()``; any when None), so that
            ``--set pmg_aft.beta=0`` never evaluates a checkpoint trained with beta = 1.
        recipe: only checkpoints whose recipe has these values (the recipe overrides asked for).
        train_knobs: only checkpoints trained with these training-profile knobs (``TrainProfile.knobs()``, the
            profile's name aside; any when None).
    """
    found = []
    for meta_path in sorted(Path(models_dir).glob("*/meta.json")):
        if not utf8(str(meta_path.parent)):
            warnings.warn(
                f"skipping {os.fsencode(meta_path.parent)!r}: its name is not valid UTF-8, which records cannot "
                "name; rename the folder",
                stacklevel=2,
            )
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            if _matches(meta, method_id, model, train_dataset, config, recipe, train_knobs):
                found.append((str(meta.get("created_utc", "")), meta_path.parent))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
            # one damaged folder never stops the runs that do not need it: it is named and skipped
            warnings.warn(
                f"skipping {meta_path.parent}: its meta.json is damaged ({type(e).__name__}); delete that folder or "
                "train it again",
                stacklevel=2,
            )
    return [p for _, p in sorted(found, reverse=True)]


def _matches(meta: dict, method_id, model, train_dataset, config, recipe, train_knobs) -> bool:
    if not (
        meta.get("method") == method_id
        and meta.get("complete")
        and meta.get("arch") == model.arch
        and meta.get("pretrained") == model.pretrained
    ):
        return False
    if train_dataset is not None and meta.get("train_dataset") != train_dataset:
        return False
    if config is not None and meta.get("config") != config:
        return False
    if recipe and any((meta.get("recipe") or {}).get(k) != v for k, v in recipe.items()):
        return False
    return train_knobs is None or _knobs_only(training_knobs(meta)) == _knobs_only(train_knobs)


def _knobs_only(knobs: dict) -> dict:
    """Training knobs without the profile's name, values as strings (JSON keeps ``"1"`` and ``1`` apart)."""
    return {k: str(v) for k, v in knobs.items() if k != "name"}


def wanted_training(method_cls: type[Method], profile: TrainProfile | None, options: dict) -> tuple[dict, dict | None]:
    """(config options, training knobs) a checkpoint of ``method_cls`` must have under ``profile``: the options with
    the method's official values filled in where the profile asks for them, and the profile's knobs as they train
    this method (``train.engine.effective_profile``); ``(options, None)`` without a profile."""
    if profile is None:
        return options, None
    prof = effective_profile(method_cls, profile)
    return method_options(method_cls, options, prof), prof.knobs()


def _checkpoint_loader(model: ModelSpec, method: Method, ref: CheckpointRef):
    def load(device: torch.device) -> tuple[LoadedModel, nn.Module]:
        loaded = load_model(model, device)
        method.check_model(loaded.model, model.arch)
        if ref.ours:
            tensors, _ = load_checkpoint(ref.path)
            encoder = method.build_encoder(loaded.model)
            check_state_tensors(tensors, method.trained_state(encoder), str(ref.path))
            method.load_trained_state(encoder, {k: v.to(device) for k, v in tensors.items()})
            return loaded, encoder
        if method.trains != "image_encoder":
            raise ZSBenchError(
                f"{ref.path} is not a robustbench_zs checkpoint folder; foreign files hold a whole image encoder, "
                f"which {method.id} ({method.trains}) cannot use"
            )
        state, _ = load_visual_state(ref.path, model.arch)
        apply_visual_state(loaded.model, state, model.arch)
        return loaded, method.build_encoder(loaded.model)

    return load


def _wanted(train_dataset: str | None, config: dict, recipe: dict, profile: TrainProfile | None = None) -> str:
    parts = [f"trained on {train_dataset}"] if train_dataset else []
    parts += [f"{k}={v}" for k, v in {**config, **recipe}.items()]
    if profile is not None:
        parts.append(f"training profile {profile.name}")
    return f" ({', '.join(parts)})" if parts else ""


def incomplete_checkpoint(path: Path, meta: dict) -> str:
    """The one line that refuses the checkpoint of a training that stopped early, and says how to finish it."""
    path = Path(path)
    done, total = meta.get("steps", "?"), meta.get("total_steps", "?")
    command = (
        f"zsbench train --method {meta.get('method', 'METHOD')} --arch {meta.get('arch', 'ARCH')} --pretrained "
        f"{meta.get('pretrained', 'TAG')} --train-dataset {meta.get('train_dataset', 'DATASET')} --models-dir "
        f"{path.parent} --name {path.name}"
    )
    return (
        f"{path} is the checkpoint of a training that stopped at step {done} of {total} (--max-steps or an "
        f"interruption); finish it with the command that started it, e.g. `{command}` with the same options (it "
        "resumes from its resume/ folder; meta.json lists them), or pass a complete checkpoint"
    )


def resolve_variants(
    method_ids: tuple[str, ...],
    model: ModelSpec,
    options: dict[str, dict[str, str]],
    checkpoints: dict[str, Path],
    models_dir: Path,
    train_fn: Callable[[str, dict[str, str], dict], Path] | None,
    echo: Callable[[str], None] = print,
    train_dataset: str | None = None,
    train_profile: TrainProfile | None = None,
    defense_eval: tuple[str, ...] = DEFENSE_EVALUATIONS,
    eot_samples: int | None = None,
) -> list[MethodVariant]:
    """The variants to evaluate, in the order of ``method_ids``; trains missing checkpoints with ``train_fn``.

    A trained method without ``--checkpoint`` uses the newest complete checkpoint under ``models_dir`` of the same
    backbone, method options and recipe overrides (and training dataset, when ``train_dataset`` is given, and
    training knobs, when ``train_profile`` is given: under ``paper`` the method's official option values count as
    asked for). A test-time defense gets one variant per evaluation in ``defense_eval``; ``eot_samples`` overrides
    the EOT samples of a randomized defense's adaptive evaluation.
    """
    bad = [e for e in defense_eval if e not in DEFENSE_EVALUATIONS]
    if bad or not defense_eval:
        raise ZSBenchError(
            f"--defense-eval {','.join(defense_eval)}: choose one or both of {', '.join(DEFENSE_EVALUATIONS)}"
        )
    unknown = sorted(set(options) - set(method_ids))
    if unknown:
        raise ZSBenchError(f"--set {unknown[0]}.…: {unknown[0]} is not among --methods {','.join(method_ids)}")
    out: list[MethodVariant] = []
    for mid in method_ids:
        cls = METHODS.get(mid)
        opts = dict(options.get(mid, {}))
        if cls.trains == "nothing":
            fields = [f.name for f in dataclasses.fields(cls.Config)]
            for key in opts:
                if key not in fields:
                    known = f"options: {', '.join(fields)}" if fields else "it takes none"
                    raise ZSBenchError(f"--set {mid}.{key}: {mid} has no option {key!r}; {known}")
            sweep_key = next((k for k, v in opts.items() if "," in v), None)
            values = opts.pop(sweep_key).split(",") if sweep_key else [None]
            for value in values:
                these = {**opts, **({sweep_key: value.strip()} if sweep_key else {})}
                method = cls(cls.Config.from_overrides(these))
                cfg = method.config.to_dict()
                label = mid if not these else f"{mid}({', '.join(f'{k}={v}' for k, v in sorted(these.items()))})"
                ident = {"method_config": cfg, **method.weights_identity()} if cfg else {}
                variant = MethodVariant(method, label, ident, _base_loader(model, method))
                out += defense_variants(variant, defense_eval, eot_samples) if is_defense(cls) else [variant]
            continue
        config_opts, recipe_opts = _split_options(cls, opts)
        path = checkpoints.get(mid)
        if path is None:
            config_opts, knobs = wanted_training(cls, train_profile, config_opts)
            wanted = cls.Config.from_overrides(config_opts).to_dict()
            kw = dict(train_dataset=train_dataset, config=wanted, recipe=recipe_opts)
            found = find_checkpoints(models_dir, mid, model, **kw, train_knobs=knobs)
            what = _wanted(train_dataset, config_opts, recipe_opts, train_profile)
            others = [] if found or knobs is None else find_checkpoints(models_dir, mid, model, **kw)
            hint = (
                f" ({len(others)} trained with other knobs, e.g. {others[0].name}: pass --checkpoint {mid}=PATH to "
                "evaluate one anyway, flagged in the leaderboard)"
                if others
                else ""
            )
            if found:
                path = found[0]
                if len(found) > 1:
                    echo(
                        f"note: {len(found)} {mid} checkpoints for {model.label} in {models_dir}; using the newest, {path.name}"
                    )
            elif train_fn is None:
                raise ZSBenchError(
                    f"no {mid} checkpoint for {model.label}{what} in {models_dir}{hint}; pass --checkpoint {mid}=PATH"
                )
            else:
                echo(f"{mid}: no checkpoint for {model.label}{what} in {models_dir}{hint}; training it first")
                path = train_fn(mid, config_opts, recipe_opts)
        path = Path(path)
        if not path.exists():
            raise ZSBenchError(f"--checkpoint {mid}={path}: no such file or folder")
        ref = CheckpointRef.of(path)
        config = config_opts
        training = None
        if ref.ours:
            meta = ref.meta
            if meta.get("method") not in (None, mid):
                raise ZSBenchError(f"--checkpoint {mid}={path} holds a {meta['method']} checkpoint")
            if meta.get("complete") is False:
                raise ZSBenchError(incomplete_checkpoint(path, meta))
            if meta.get("arch") not in (None, model.arch):
                raise ZSBenchError(
                    f"{path} was trained from {meta['arch']}, not {model.arch}; pass --arch {meta['arch']}"
                )
            config = {k: str(v) for k, v in meta.get("config", {}).items()}
            training = training_summary(meta)
        method = cls(cls.Config.from_overrides(config))
        ident = {**ref.identity(), "method_config": method.config.to_dict()}
        out.append(MethodVariant(method, mid, ident, _checkpoint_loader(model, method, ref), ref.name, training))
    return out
