"""SignSGD: the simplest plugin form, a plain torch.optim.Optimizer subclass, plus a richer builder."""

from __future__ import annotations

import torch

from optim_registry.spec import OptimizerSpec, opt


class SignSGD(torch.optim.Optimizer):
    """SignSGD with momentum: steps by the sign of the (momentum-averaged) gradient."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["momentum"]:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(grad)
                    grad = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(grad), alpha=-group["lr"])
        return loss


def _sign_on_targets(ctx):
    """Sign steps on the targeted Linear weights; elsewhere the step is scaled down by `other_scale`."""
    scale = ctx.options["other_scale"]  # every declared option is there: given, else its default
    groups = []
    for group in ctx.groups:
        targeted = group.get("targeted", False)
        groups.append({**group, "lr": ctx.hparams["lr"] * (1.0 if targeted else scale)})
    return SignSGD, {"lr": ctx.hparams["lr"], "params": groups}


# The richer form: a record. It declares that it uses optim_target_modules (the registry then
# checks the patterns and marks the matched weights' group with `targeted=True`) and its options.
TARGETED = OptimizerSpec(
    name="example_signsgd_targets",
    target=SignSGD,
    family="example",
    description="SignSGD at full rate on optim_target_modules, scaled down elsewhere.",
    builder=_sign_on_targets,
    target_modules=True,
    target_options=frozenset({"targeted"}),
    options=(
        opt("targeted", "bool", True, "marks the targeted group", send=True),
        opt("other_scale", "float", 0.1, "learning-rate factor for parameters outside the targets"),
    ),
    hparams=frozenset({"lr", "weight_decay"}),
    supports_layerwise=False,
)
