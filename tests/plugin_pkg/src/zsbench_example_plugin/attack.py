"""``fgsm``: one signed-gradient step of the full radius (Goodfellow et al., ICLR 2015), an example attack plugin."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_zs.attacks import Attack
from robustbench_zs.attacks.core import attack_autocast, eval_mode_no_param_grad, project


class FGSM(Attack):
    """``x' = clip(x + eps * sign(grad_x CE(z(x), y)))``: one step, no random start, L-inf only.

    The class attributes tell robustbench_zs how to run and record it (see docs/adding_an_attack.md).
    """

    description = "FGSM: one signed-gradient step of size eps on the cross-entropy (example plugin)"
    display = "FGSM"
    default_steps = None  # one step, fixed: --steps does not apply
    uses_step_size = False  # the step is eps itself
    norms = ("linf",)
    fixed_settings = {"steps_fixed": 1, "loss": "ce", "random_start": False}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        eps = self.threat.eps
        with eval_mode_no_param_grad(model), torch.enable_grad():
            x_var = x.detach().clone().requires_grad_(True)
            with attack_autocast(x.device, self.threat.precision):
                logits = model(x_var)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_var)
        delta = project(eps * grad.sign(), x, eps, "linf")
        return (x + delta).detach()
