"""The method registry: what each method needs, what it trains, its paper defaults and its training loss.

A method is a subclass of :class:`Method` registered with :func:`register_method`::

    @dataclass(frozen=True)
    class MyConfig(MethodConfig):
        lam: float = 1.0  # the paper's default


    @register_method
    class MyMethod(Method):
        id = "my_method"
        name = "My method"
        summary = "one line for zsbench list methods"
        paper = "Author et al., Title, Venue Year"
        Config = MyConfig
        needs_frozen = True  # the engine builds a frozen copy of the pre-trained encoder

        def loss(self, step):
            x_adv = step.attack(lambda xa: F.cross_entropy(step.model(xa), step.y, reduction="none"))
            ce = F.cross_entropy(step.model(x_adv), step.y)
            return ce, {"ce": ce}

The engine (``robustbench_zs.train``) reads the class attributes to build only what a method needs, calls
:meth:`Method.loss` once per batch and saves :meth:`Method.trained_state` in the checkpoint. See
``docs/adding_a_method.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..errors import ZSBenchError
from ..registry import PluginError, Registry

#: What a method trains.
TRAINS = ("nothing", "image_encoder", "prompts")

#: Rules of the training PGD (:attr:`Recipe.train_attack`).
TRAIN_ATTACKS = ("pgd", "pgd_momentum")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's configuration; subclasses hold the paper's defaults as field defaults."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_overrides(cls, overrides: dict[str, str]) -> MethodConfig:
        """A config with ``--set key=value`` overrides, each value parsed to the field's type; one-line errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, raw in overrides.items():
            if key not in fields:
                known = f"options: {', '.join(fields)}" if fields else "it has none"
                raise ZSBenchError(f"{cls.__name__} has no option {key!r}; {known}")
            default = getattr(cls(), key)
            try:
                if isinstance(default, bool):
                    if raw.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(raw)
                    values[key] = raw.lower() in ("true", "1")
                elif isinstance(default, (int, float)):
                    values[key] = type(default)(raw)
                else:
                    values[key] = raw
            except ValueError:
                raise ZSBenchError(f"{cls.__name__}.{key}: cannot read {raw!r} as {type(default).__name__}") from None
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ZSBenchError (one line) for values outside what the method supports."""


#: recipe field -> (type, least value, whether the least value itself is allowed, greatest value or None)
RECIPE_RANGES: dict[str, tuple[type, float, bool, float | None]] = {
    "lr": (float, 0.0, False, None),
    "momentum": (float, 0.0, True, 1.0),
    "weight_decay": (float, 0.0, True, None),
    "warmup_steps": (int, 0, True, None),
    "epochs": (int, 1, True, None),
    "batch_size": (int, 1, True, None),
    "train_eps_255": (float, 0.0, True, 255.0),
    "train_steps": (int, 0, True, None),
    "train_step_size_255": (float, 0.0, True, 255.0),
}


def recipe_value(name: str, value: object) -> object:
    """A recipe field's value checked and converted: a finite number of the field's type in its range (from a
    number or its text), or a word for the others; a ``ValueError`` says what is wrong."""
    if name not in RECIPE_RANGES:
        if not isinstance(value, str):
            raise ValueError(f"must be a word, not {type(value).__name__}")
        return value
    kind, least, inclusive, most = RECIPE_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    if kind is int:
        if number != int(number):
            raise ValueError("must be a whole number")
        number = int(number)
    bound = f"at least {least:g}" if inclusive else f"above {least:g}"
    if number < least or (not inclusive and number == least) or (most is not None and number > most):
        raise ValueError(f"must be {bound}" + (f" and at most {most:g}" if most is not None else ""))
    return kind(number)


@dataclass(frozen=True)
class Recipe:
    """The training recipe of protocol.md section 3 (ViT-B/32, TinyImageNet); methods override what differs.

    Attributes:
        optimizer: ``sgd`` or ``adamw``.
        lr, momentum, weight_decay: optimizer settings (momentum is SGD's; AdamW uses the default betas).
        warmup_steps: linear warm-up from 0, then cosine decay to 0 over the remaining steps.
        epochs: passes over the training split.
        batch_size: the global batch (split across processes under torchrun).
        train_eps_255, train_steps, train_step_size_255: the training PGD (L-inf, uniform random start).
        train_attack: the training PGD's rule: ``pgd`` (the TeCoA/PMG-AFT code: random start clipped to the image,
            then ``delta += step * sign(grad)``) or ``pgd_momentum`` (RobustVLM's ``train/pgd_train.py``, FARE: the
            first forward sees the unclipped random start, then ``v = sign(0.9 * v + sign(grad))`` and
            ``delta += step * v``).

    The head knobs (normalization, logit scale), the training precision and the attack's reduction and mode are
    not part of the recipe: they are the training profile's (:class:`robustbench_zs.profiles.TrainProfile`), so that
    a model is trained with the knobs it is evaluated with.
    """

    optimizer: str = "sgd"
    lr: float = 5e-5
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    epochs: int = 10
    batch_size: int = 256
    train_eps_255: float = 1.0
    train_steps: int = 2
    train_step_size_255: float = 1.0
    train_attack: str = "pgd"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Step:
    """What :meth:`Method.loss` receives for one batch (all tensors on the training device).

    Attributes:
        x: clean images in [0, 1], (B, 3, H, W).
        y: labels (B,), or None for methods with ``needs_labels = False``.
        model: the classifier being trained (pixels in [0, 1] -> logits); ``model.features(x)`` gives the
            L2-normalized embeddings and ``model.embed(x)`` the unnormalized ones.
        frozen: the pre-trained classifier, eval mode, no gradients (None unless ``needs_frozen``).
        attack: ``attack(loss_fn) -> x_adv``: the recipe's training PGD from ``x``, maximizing the sum of
            ``loss_fn(x_adv)`` (or its batch mean: the training profile's ``attack_reduction``) where ``loss_fn``
            returns one loss per image; gradients flow only to the perturbation, never into the parameters.
            Random starts are seeded per image.
        joint_forward: let :meth:`pair` run two batches through the model as one (the training engine sets it
            for GPUs only; see :func:`robustbench_zs.train.engine.step_loss`).
    """

    x: torch.Tensor
    y: torch.Tensor | None
    model: nn.Module
    frozen: nn.Module | None
    attack: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    extras: dict = field(default_factory=dict)
    joint_forward: bool = True

    def pair(
        self, fn: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fn(a), fn(b))`` for a function of :attr:`model` (``step.model``, ``step.model.embed``).

        Computed as one forward of the concatenated batch when every image's output depends on that image alone
        (:func:`batch_independent`): one pass with twice the rows keeps the matrix units busier and walks the
        weights once, and the outputs equal the separate ones up to float rounding. BatchNorm in training mode or
        active dropout would make the joint batch change the results, so those models get two forwards.
        """
        if self.joint_forward and a.shape[1:] == b.shape[1:] and batch_independent(self.model):
            out = fn(torch.cat([a, b]))
            return out[: len(a)], out[len(a) :]
        return fn(a), fn(b)


def batch_independent(module: nn.Module) -> bool:
    """Whether ``module`` maps each image of a batch to an output that depends on that image alone.

    False when a BatchNorm normalizes with batch statistics (training mode, or no running statistics: TWINS' wings
    included) or when dropout is active (a joint batch would draw other masks); such models must not see two
    batches concatenated.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats):
            return False
        if m.training and any(
            isinstance(getattr(m, name, None), float) and getattr(m, name) > 0 for name in ("p", "dropout", "prob")
        ):
            return False
    return True


class Method:
    """Base class of registered methods. Class attributes describe the method; hooks define its training.

    Class attributes:
        id, name, summary, paper: registry name, display name, one line for ``zsbench list methods``, reference.
        Config: the method's config dataclass (paper defaults).
        recipe: the training recipe (optimizer, schedule, training attack, head knobs).
        needs_labels / needs_text_head / needs_frozen: what the engine must build.
        trains: ``nothing``, ``image_encoder`` or ``prompts``.
        train_attack_mode: the model's mode during the training attack where the method's own official code fixes
            it (``eval``: FARE, TWINS); None: the training profile's ``attack_mode``.
        official_options: the option values of the method's official code where they differ from the defaults
            (the paper's equations); the ``paper`` training profile uses them unless an option is given.
        weights_options: the Config options that name weights files (interpolation's ``theta0``, ``theta1``): record
            keys hold those files' hashes (:meth:`weights_identity`) instead of their paths, so a moved or renamed
            copy of the same weights reuses its records.
    """

    id: ClassVar[str] = ""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    recipe: ClassVar[Recipe] = Recipe()
    needs_labels: ClassVar[bool] = True
    needs_text_head: ClassVar[bool] = True
    needs_frozen: ClassVar[bool] = False
    trains: ClassVar[str] = "image_encoder"
    train_attack_mode: ClassVar[str | None] = None
    official_options: ClassVar[dict[str, str]] = {}
    weights_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.config.validate()

    @classmethod
    def without_weight_paths(cls, block: dict) -> dict:
        """``block`` (a variant's identity, or a record's model block) with the paths of :attr:`weights_options` left
        out of its ``method_config`` wherever their hashes stand beside them, under the same names: what record keys
        and leaderboard rows go by, so that a moved copy of the same file changes neither."""
        config = block.get("method_config")
        hashed = [k for k in cls.weights_options if k in block]
        if not isinstance(config, dict) or not hashed:
            return dict(block)
        return {**block, "method_config": {k: v for k, v in config.items() if k not in hashed}}

    # --- model surgery -------------------------------------------------------------------------------------------
    def check_model(self, model: nn.Module, arch: str) -> None:
        """Raise ZSBenchError (one line) if this method cannot train ``model`` (e.g. needs BatchNorm)."""

    def build_encoder(self, model: nn.Module) -> nn.Module:
        """The image encoder the classifier uses: ``model.visual``, or a wrapper (visual prompts, twin BN)."""
        return model.visual

    def trainable_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer updates; everything else is frozen. Default: the whole image encoder."""
        return [p for p in encoder.parameters()]

    def trained_state(self, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores: what this method trains (default: the encoder's state dict)."""
        return {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}

    def load_trained_state(self, encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Put a checkpoint's tensors into ``encoder`` (strict: a mismatch is an error, never silently skipped)."""
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ZSBenchError(
                f"checkpoint does not fit {self.id}'s encoder: {len(missing)} missing keys (e.g. "
                f"{', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'})"
            )

    def weights_identity(self) -> dict:
        """Hashes of any weights the method reads besides the backbone and its checkpoint (record keys); default none."""
        return {}

    # --- training ------------------------------------------------------------------------------------------------
    def loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of one batch and its named terms (for the progress bar and the log)."""
        raise NotImplementedError(f"{self.id} does not train")


def check_method(cls: type[Method]) -> None:
    """Raise ValueError unless ``cls`` is a complete method class (ours or a plugin's)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"{cls!r} is not a subclass of robustbench_zs.methods.Method")
    if not cls.id or not cls.summary:
        raise ValueError(f"{cls.__name__}: a registered method needs an id and a summary")
    if cls.trains not in TRAINS:
        raise ValueError(f"{cls.__name__}.trains must be one of {TRAINS}")
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)):
        raise ValueError(f"{cls.__name__}.Config must be a MethodConfig dataclass")
    if cls.recipe.train_attack not in TRAIN_ATTACKS:
        raise ValueError(f"{cls.__name__}.recipe.train_attack must be one of {TRAIN_ATTACKS}")
    unknown = set(cls.official_options) - {f.name for f in dataclasses.fields(cls.Config)}
    if unknown:
        raise ValueError(f"{cls.__name__}.official_options: {', '.join(sorted(unknown))} are not options of its Config")
    unknown = set(cls.weights_options) - {f.name for f in dataclasses.fields(cls.Config)}
    if unknown:
        raise ValueError(f"{cls.__name__}.weights_options: {', '.join(sorted(unknown))} are not options of its Config")


def adopt_method(name: str, obj: object) -> type[Method]:
    """A plugin's method class under the entry point's ``name``: a subclass whose ``id`` is ``name`` where the
    class calls itself otherwise (records, checkpoints and the leaderboard know it by the name users type)."""
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise PluginError(f"it names a {type(obj).__name__}, not a subclass of robustbench_zs.methods.Method")
    cls = obj
    if cls.id != name:
        cls = type(cls.__name__, (cls,), {"id": name, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    try:
        check_method(cls)
    except ValueError as e:
        raise PluginError(str(e)) from None
    return cls


#: every method: ours (registered with :func:`register_method`) and other packages' (entry points in the group
#: ``robustbench_zs.methods``, see docs/adding_a_method.md)
METHODS: Registry[type[Method]] = Registry("method", group="robustbench_zs.methods", adopt=adopt_method)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add ``cls`` to :data:`METHODS` under ``cls.id`` (a duplicate id is an error)."""
    check_method(cls)
    METHODS.add(cls.id, cls)
    return cls
