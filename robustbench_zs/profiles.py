"""Evaluation profiles: one name for a whole set of knobs that change the numbers.

- ``standard`` (recommended): CLIP normalization, logit scale 100, fp32 attacks, every image of every test set, the
  ensemble prompts of CLIP_benchmark, and the model's own open_clip preprocessing.
- ``paper``: what the official PMG-AFT code ran (protocol.md section 4): ImageNet normalization, logit scale 1 for
  every method, fp16 autocast around the attacks (mean-reduced loss, no loss scaling), PIL Resize(256) +
  CenterCrop(224) with CIFAR/STL at native resolution, the paper's single prompts. ``paper_subsample`` (off unless
  asked for with ``--paper-subsample``) evaluates only every 20th batch of 256 images, as the paper's validation did.

A record stores the profile's name and each knob on its own (``record["profile"]``), and the leaderboard ranks only
rows whose knobs agree. Explicit flags (``--logit-scale`` and so on) override single knobs; the record then names
the profile ``custom`` so that no one mistakes it for the named set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import ZSBenchError

PAPER_SUBSAMPLE_EVERY = 20
PAPER_SUBSAMPLE_BATCH = 256


@dataclass(frozen=True)
class Profile:
    """The knobs of one evaluation profile.

    Attributes:
        name: ``paper``, ``standard`` or ``custom`` (a named profile with a knob changed).
        normalization: ``clip`` or ``imagenet`` mean/std inside the classifier.
        logit_scale: ``100``, ``1`` or ``learned``.
        attack_precision: ``fp32``, ``bf16`` or ``fp16`` (fp16: the official code's autocast, mean-reduced loss).
        preprocess: ``paper`` or ``standard`` (see ``datasets.preprocess``).
        prompts: ``paper`` or ``ensemble``.
        paper_subsample: evaluate only every 20th batch of 256 test images (the official validation loop).
    """

    name: str
    normalization: str
    logit_scale: str
    attack_precision: str
    preprocess: str
    prompts: str
    paper_subsample: bool = False

    def knobs(self) -> dict:
        """Every knob but the name, for records and for comparing profiles."""
        d = asdict(self)
        d.pop("name")
        return d

    def with_overrides(self, **changes) -> Profile:
        """This profile with some knobs changed (``None`` values are ignored); renamed ``custom`` if any changed."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - set(self.knobs())
        if unknown:
            raise ZSBenchError(
                f"unknown profile knob(s) {', '.join(sorted(unknown))}; knobs: {', '.join(self.knobs())}"
            )
        new = replace(self, **changes)
        return new if new.knobs() == self.knobs() else replace(new, name="custom")


PROFILES: dict[str, Profile] = {
    "standard": Profile(
        name="standard",
        normalization="clip",
        logit_scale="100",
        attack_precision="fp32",
        preprocess="standard",
        prompts="ensemble",
    ),
    "paper": Profile(
        name="paper",
        normalization="imagenet",
        logit_scale="1",
        attack_precision="fp16",
        preprocess="paper",
        prompts="paper",
    ),
}


def get_profile(name: str) -> Profile:
    """The named profile, or a one-line error listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ZSBenchError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None


def knob_differences(a: dict, b: dict) -> list[str]:
    """The knobs on which two records' profiles differ, as ``knob: a vs b`` lines (empty when they agree)."""
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def run_config_fields(profile: Profile) -> dict:
    """The ``engine.runner.RunConfig`` fields a profile sets (the attack precision goes into each ``Threat``)."""
    from .models import HeadKnobs

    return {
        "knobs": HeadKnobs(normalization=profile.normalization, logit_scale=profile.logit_scale),
        "prompts": profile.prompts,
        "preprocess": profile.preprocess,
        "paper_subsample": profile.paper_subsample,
        "profile": profile.name,
    }
