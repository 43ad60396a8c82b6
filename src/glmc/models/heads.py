"""The four GLMC heads on the pooled feature `h` (docs/method.md)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glmc.models.output import GLMCOutput
from glmc.registry import Registry


class CosineLinear(nn.Linear):
    """A normalised linear classifier: `cos(h, w_k)`, no bias (Cao et al. 2019, LDAM's `NormedLinear`).

    Input N x d, output N x K in [-1, 1]. LDAM's `s` multiplies these in the heads (`GLMCHeads`'s
    `logit_scale`), not here, so the classifier stays the one Cao et al. describe.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        """Cao et al.'s initialisation: each class vector w_k uniform in [-1, 1]^d, then scaled to norm 1. The
        forward reads only its direction, but its norm sets how fast SGD turns it (a step moves the direction by
        about lr * |grad| / |w|), so a Kaiming-normal start (norm about sqrt(2) for d = 64) would learn slower."""
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True))

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(F.normalize(h, dim=-1), F.normalize(self.weight, dim=-1))  # N x K


# The prediction head `fc_cb`: "linear" (the default) or "cosine" (LDAM's normalised one).
CLASSIFIERS: Registry[Callable[[int, int], nn.Module]] = Registry("classifier")
CLASSIFIERS.register("linear")(nn.Linear)
CLASSIFIERS.register("cosine")(CosineLinear)


# The heads by module name; `fc_cb` predicts, so every method uses it. The predictor reads the projection.
HEADS = ("fc_cb", "fc", "projection", "predictor")


class GLMCHeads(nn.Module):
    """Classifier, re-balanced classifier, projection and predictor on a pooled feature.

    Input: `h`, N x d pooled features. Output: a `GLMCOutput` with `logits` = fc_cb(h)
    (N x K, used for prediction), `logits_fc` = fc(h) (N x K), `z` = projection(h)
    (N x e), `p` = predictor(z) (N x e) and `feature` = h (N x d). `classifier` names the
    kind of `fc_cb` in CLASSIFIERS. `logit_scale` multiplies fc_cb's outputs where the method's
    loss does (LDAM's s on cosines; `MethodOptions.logit_scale`), so that softmax(logits) are the
    probabilities it trained; such logits are fp32. Only the heads in `active` are computed (all by
    default); the others' fields are None.
    """

    def __init__(self, feature_dim: int, num_classes: int, projection_dim: int = 128, classifier: str = "linear",
                 logit_scale: float = 1.0) -> None:
        super().__init__()
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.logit_scale = float(logit_scale)
        self.fc = nn.Linear(feature_dim, num_classes)  # classifier C, trained with L_CE
        self.fc_cb = CLASSIFIERS.get(classifier)(feature_dim, num_classes)  # re-balanced, trained with L_cb
        self.projection = nn.Linear(feature_dim, projection_dim)
        self.predictor = nn.Linear(projection_dim, projection_dim)
        self.active = frozenset(HEADS)

    def forward(self, h: Tensor) -> GLMCOutput:
        logits = self.fc_cb(h)  # N x d -> N x K
        if self.logit_scale != 1.0:  # in fp32: on bf16 cosines a scale of 30 would round a logit by up to 0.06
            logits = self.logit_scale * logits.float()
        logits_fc = self.fc(h) if "fc" in self.active else None  # N x d -> N x K
        z = self.projection(h) if "projection" in self.active else None  # N x d -> N x e
        p = self.predictor(z) if "predictor" in self.active else None  # N x e -> N x e
        return GLMCOutput(logits=logits, logits_fc=logits_fc, z=z, p=p, feature=h)


def glmc_heads(model: nn.Module) -> GLMCHeads:
    for module in model.modules():
        if isinstance(module, GLMCHeads):
            return module
    raise TypeError(f"{type(model).__name__} has no GLMC heads")


def use_heads(model: nn.Module, heads: Iterable[str]) -> None:
    """Compute only `heads` (and fc_cb) from now on and freeze the others' parameters, so that an
    optimiser or DDP sees only parameters that get gradients. Their weights stay in the state dict."""
    wanted = frozenset(heads) | {"fc_cb"}
    unknown = wanted - set(HEADS)
    if unknown:
        raise ValueError(f"unknown heads {sorted(unknown)}; the heads are {', '.join(HEADS)}")
    if "predictor" in wanted and "projection" not in wanted:
        raise ValueError("the predictor reads the projection: use both")
    module = glmc_heads(model)
    module.active = wanted
    for name in HEADS:
        getattr(module, name).requires_grad_(name in wanted)


def prediction_head(model: nn.Module) -> nn.Module:
    """The classifier that evaluation predicts with (`fc_cb` of the model's GLMC heads)."""
    return glmc_heads(model).fc_cb
