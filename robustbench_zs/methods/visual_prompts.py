"""Visual prompt tuning: ``vp_tecoa`` and ``vp_pmg_aft`` train prompts only, with the CLIP backbone frozen.

The prompts are those of protocol.md section 2, as TeCoA's visual-prompt code implements them
(cvlab-columbia/ZSRobust4FoundationModel: ``visual_prompt.py``, ``models/prompters.py``, ``replace/model.py``):

* a padding prompt (Bahng et al.'s ``PadPrompter``): a learnable border of ``pad`` pixels (30 at 224 px) added to
  the *normalized* image (the official code applies it after ``clip_img_preprocessing``);
* ``n_tokens`` learnable tokens of the transformer's width (100 in the paper; the code's default is 10), appended
  after the patch tokens and passed through ``ln_pre`` and the transformer with the image tokens; the class token is
  pooled as usual. Each token position has a positional embedding (``prompt_pos_embedding = scale * zeros`` in the
  code's ``VisionTransformer``) that lives in the frozen backbone: the official optimizer is
  ``SGD(list(prompter.parameters()) + list(add_prompter.parameters()))``, so it is never trained and stays zero.
  Here it is a zero buffer, never trained either. (Training it as well, as an earlier version of this package did,
  moves every token along ``grad`` twice per step: the token and its position get the same gradient and are added.)

Which tensors train, and how: exactly the official ``PadPrompter`` border (``pad_up``, ``pad_down``, ``pad_left``,
``pad_right``, here one masked tensor) and ``TokenPrompter.prompt`` (1 x n_tokens x width), both drawn from N(0, 1)
(``torch.randn``; ``prompt_init="zeros"`` starts them at zero instead), updated by SGD at lr 40 with momentum 0.9
and no weight decay under the linear warm-up and cosine schedule (``--learning_rate 40`` in TeCoA's
``visual_prompt.py``; protocol.md section 2). The backbone stays frozen and in eval mode (TeCoA's code keeps
``model.eval()`` while it trains the prompters); checkpoints hold only the trained prompt tensors (a checkpoint of
the earlier version that also holds a trained ``prompt_pos_embedding`` still loads, into the buffer, so it is
evaluated as it was trained).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from ..errors import ZSBenchError
from .base import MethodConfig, register_method
from .pmg_aft import PMGAFT, PMGAFTConfig
from .tecoa import TeCoA

#: Prompt initializations: N(0, 1) as the official code, or zeros.
PROMPT_INITS = ("randn", "zeros")

#: The reference input size the ``pad`` option is given at (the paper's 30 px border is at 224 px).
REFERENCE_SIZE = 224

#: Names of the trained prompt tensors in checkpoints.
PROMPT_KEYS = ("pad_prompt", "prompt_tokens")
#: The tokens' positional embedding: zero and never trained (the official code's optimizer does not hold it); read from
#: checkpoints of earlier versions of this package, which trained it.
POS_KEY = "prompt_pos_embedding"


def scaled_pad(pad: int, size: int) -> int:
    """The border width in pixels at input side ``size`` for ``pad`` pixels at 224 px: round(pad * size / 224), >= 1.

    ``pad = 0`` means no padding prompt (0 pixels).
    """
    if pad <= 0:
        return 0
    return max(1, round(pad * size / REFERENCE_SIZE))


class PromptedViT(nn.Module):
    """An open_clip :class:`~open_clip.transformer.VisionTransformer` with a padding prompt and prompt tokens.

    Args:
        vit: the image tower; its parameters are frozen (``requires_grad = False``) and it stays in eval mode.
        pad: border width in pixels at 224 px input, scaled to the tower's input size by :func:`scaled_pad`;
            0 disables the padding prompt.
        n_tokens: number of prompt tokens appended after the patch tokens; 0 disables them.
        prompt_init: ``randn`` (N(0, 1), the official code) or ``zeros`` for the border and the tokens.

    ``forward`` takes normalized images (B, 3, H, W) at the tower's input size and mirrors open_clip 3.3's
    ``VisionTransformer.forward``: conv1, class token, positional embedding, patch dropout, [prompt tokens], ln_pre,
    transformer, [prompt tokens dropped], pooling, ln_post, proj. The prompt tokens join after patch dropout (they
    are never dropped) and leave before pooling (``avg`` pooling averages image tokens only; ``tok`` pooling takes the
    class token as in the official code). With every prompt at zero and ``n_tokens = 0`` the output equals the
    wrapped tower's exactly.
    """

    def __init__(self, vit: nn.Module, pad: int = 30, n_tokens: int = 100, prompt_init: str = "randn") -> None:
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise ZSBenchError(
                f"visual prompts need a ViT image tower (open_clip VisionTransformer, e.g. --arch ViT-B-32), "
                f"not {type(vit).__name__}"
            )
        if prompt_init not in PROMPT_INITS:
            raise ZSBenchError(f"prompt_init must be one of {', '.join(PROMPT_INITS)}, got {prompt_init!r}")
        if pad < 0 or n_tokens < 0:
            raise ZSBenchError(f"visual prompts: pad and n_tokens must be >= 0, got pad={pad}, n_tokens={n_tokens}")
        self.vit = vit
        vit.requires_grad_(False)
        height, width = vit.image_size
        self.pad_px = (scaled_pad(pad, height), scaled_pad(pad, width))
        if 2 * self.pad_px[0] >= height or 2 * self.pad_px[1] >= width:
            raise ZSBenchError(
                f"visual prompts: a border of {self.pad_px[0]}x{self.pad_px[1]} px (pad={pad} at {REFERENCE_SIZE} px) "
                f"covers the whole {height}x{width} input; use a smaller pad"
            )
        ref = vit.conv1.weight
        factory = {"device": ref.device, "dtype": torch.float32}
        random = prompt_init == "randn"

        if pad > 0:
            mask = torch.zeros(1, height, width, **factory)
            ph, pw = self.pad_px
            mask[:, :ph, :] = 1
            mask[:, height - ph :, :] = 1
            mask[:, :, :pw] = 1
            mask[:, :, width - pw :] = 1
            init = torch.randn(3, height, width, **factory) if random else torch.zeros(3, height, width, **factory)
            self.pad_prompt = nn.Parameter(init * mask)  # zero inside: the interior is masked out and never trained
            self.register_buffer("pad_mask", mask, persistent=False)
        else:
            self.register_parameter("pad_prompt", None)
            self.register_buffer("pad_mask", None, persistent=False)

        token_width = vit.conv1.out_channels
        if n_tokens > 0:
            shape = (n_tokens, token_width)
            tokens = torch.randn(shape, **factory) if random else torch.zeros(shape, **factory)
            self.prompt_tokens = nn.Parameter(tokens)
            self.register_buffer(POS_KEY, torch.zeros(shape, **factory), persistent=False)
        else:
            self.register_parameter("prompt_tokens", None)
            self.register_buffer(POS_KEY, None, persistent=False)
        self.vit.eval()

    # --- what the engine and the classifier read ------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.vit.image_size)

    @property
    def output_dim(self) -> int:
        return self.vit.output_dim

    @property
    def n_tokens(self) -> int:
        return 0 if self.prompt_tokens is None else int(self.prompt_tokens.shape[0])

    def train(self, mode: bool = True) -> PromptedViT:
        """Train mode for the prompts; the frozen backbone always stays in eval mode (no patch dropout)."""
        super().train(mode)
        self.vit.eval()
        return self

    # --- prompts ----------------------------------------------------------------------------------------------------
    def prompt_parameters(self) -> list[nn.Parameter]:
        """The learnable prompt tensors (the only parameters a prompt method trains)."""
        return [p for p in (getattr(self, k) for k in PROMPT_KEYS) if p is not None]

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """The trained prompt tensors by name, detached, on the CPU (what a checkpoint stores)."""
        return {k: p.detach().cpu().contiguous() for k in PROMPT_KEYS if (p := getattr(self, k)) is not None}

    def load_prompt_state(self, state: dict[str, torch.Tensor], owner: str = "visual prompts") -> None:
        """Copy prompt tensors into this module; strict: the same names and shapes, else a one-line ZSBenchError.

        A ``prompt_pos_embedding`` (checkpoints of earlier versions, which trained it) is loaded into the buffer."""
        expected = {k: p for k in PROMPT_KEYS if (p := getattr(self, k)) is not None}
        if POS_KEY in state and getattr(self, POS_KEY) is not None:
            expected[POS_KEY] = getattr(self, POS_KEY)
        missing = sorted(set(expected) - set(state) - {POS_KEY})
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ZSBenchError(
                f"checkpoint does not fit {owner}: missing {', '.join(missing) or '-'}, "
                f"unexpected {', '.join(unexpected[:3]) or '-'}{' ...' if len(unexpected) > 3 else ''} "
                f"(built with pad={self.pad_px} px, n_tokens={self.n_tokens})"
            )
        for key, param in expected.items():
            value = state[key]
            if tuple(value.shape) != tuple(param.shape):
                raise ZSBenchError(
                    f"checkpoint does not fit {owner}: {key} has shape {tuple(value.shape)}, the encoder "
                    f"expects {tuple(param.shape)} (different input size, pad or n_tokens?)"
                )
        with torch.no_grad():
            for key, param in expected.items():
                if key in state:
                    param.copy_(state[key].to(device=param.device, dtype=param.dtype))

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        vit = self.vit
        if self.pad_prompt is not None:
            x = x + (self.pad_prompt * self.pad_mask).to(x.dtype)
        x = vit.conv1(x)  # (B, width, gh, gw)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, gh*gw, width)
        cls = vit.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + vit.positional_embedding.to(x.dtype)
        x = vit.patch_dropout(x)
        n_image_tokens = x.shape[1]
        if self.prompt_tokens is not None:
            prompts = (self.prompt_tokens + self.prompt_pos_embedding).to(x.dtype)
            x = torch.cat([x, prompts.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        x = vit.ln_pre(x)
        x = vit.transformer(x)
        x = x[:, :n_image_tokens]
        pooled, tokens = vit._pool(x)
        if vit.proj is not None:
            pooled = pooled @ vit.proj
        if vit.output_tokens:
            return pooled, tokens
        return pooled


def _validate_prompt_options(cfg) -> None:
    for key in ("pad", "n_tokens"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ZSBenchError(f"visual prompts: {key} must be an integer >= 0, got {value!r}")
    if cfg.pad == 0 and cfg.n_tokens == 0:
        raise ZSBenchError("visual prompts: pad=0 and n_tokens=0 leave nothing to train; set one of them above 0")
    if 2 * cfg.pad >= REFERENCE_SIZE:
        raise ZSBenchError(f"visual prompts: pad={cfg.pad} (px at {REFERENCE_SIZE} px) covers the whole image")
    if cfg.prompt_init not in PROMPT_INITS:
        raise ZSBenchError(
            f"visual prompts: prompt_init must be one of {', '.join(PROMPT_INITS)}, got {cfg.prompt_init!r}"
        )


@dataclass(frozen=True)
class VisualPromptConfig(MethodConfig):
    """Visual prompt options (TeCoA's visual-prompt code; the PMG-AFT paper's prompt rows).

    Attributes:
        pad: padding-prompt border in pixels at 224 px input (paper: 30), scaled to the model's input size;
            0 = no padding prompt.
        n_tokens: prompt tokens appended after the patch tokens (paper: 100); 0 = none.
        prompt_init: ``randn`` (N(0, 1), as the official ``PadPrompter`` / ``TokenPrompter``) or ``zeros``.
    """

    pad: int = 30
    n_tokens: int = 100
    prompt_init: str = "randn"

    def validate(self) -> None:
        _validate_prompt_options(self)


@dataclass(frozen=True)
class VPPMGAFTConfig(PMGAFTConfig):
    """PMG-AFT's options (:class:`~robustbench_zs.methods.pmg_aft.PMGAFTConfig`) plus the visual prompt ones."""

    pad: int = 30
    n_tokens: int = 100
    prompt_init: str = "randn"

    def validate(self) -> None:
        super().validate()
        _validate_prompt_options(self)


class _PromptHooks:
    """Encoder hooks shared by the prompt methods: a :class:`PromptedViT`, only its prompts trained and saved."""

    trains = "prompts"

    def check_model(self, model: nn.Module, arch: str) -> None:
        if not isinstance(getattr(model, "visual", None), VisionTransformer):
            raise ZSBenchError(
                f"{self.id} needs a ViT image tower (open_clip VisionTransformer, e.g. --arch ViT-B-32); "
                f"{arch} has {type(getattr(model, 'visual', None)).__name__}"
            )

    def build_encoder(self, model: nn.Module) -> PromptedViT:
        cfg = self.config
        return PromptedViT(model.visual, pad=cfg.pad, n_tokens=cfg.n_tokens, prompt_init=cfg.prompt_init)

    def trainable_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        return encoder.prompt_parameters()

    def trained_state(self, encoder: nn.Module) -> dict[str, torch.Tensor]:
        return encoder.prompt_state()

    def load_trained_state(self, encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
        encoder.load_prompt_state(state, owner=f"{self.id}'s prompts")


@register_method
class VPTeCoA(_PromptHooks, TeCoA):
    """TeCoA's loss ``CE(z(x'), y)`` training visual prompts only (backbone frozen); SGD lr 40."""

    id = "vp_tecoa"
    name = "TeCoA (visual prompts)"
    summary = "TeCoA's adversarial cross-entropy training only a padding prompt and 100 prompt tokens (ViT frozen)"
    paper = "Mao et al., Understanding Zero-Shot Adversarial Robustness for Large-Scale Models, ICLR 2023"
    Config = VisualPromptConfig
    recipe = dataclasses.replace(TeCoA.recipe, lr=40.0)


@register_method
class VPPMGAFT(_PromptHooks, PMGAFT):
    """PMG-AFT's loss training visual prompts only (backbone frozen); the frozen branch is the unprompted CLIP."""

    id = "vp_pmg_aft"
    name = "PMG-AFT (visual prompts)"
    summary = "PMG-AFT's loss training only a padding prompt and 100 prompt tokens (ViT frozen)"
    paper = (
        "Wang et al., Pre-trained Model Guided Fine-Tuning for Zero-Shot Adversarial Robustness, CVPR 2024 "
        "(arXiv 2401.04350)"
    )
    Config = VPPMGAFTConfig
    recipe = dataclasses.replace(PMGAFT.recipe, lr=40.0)
