"""GLMC: Global and Local Mixture Consistency cumulative learning.

Du, Yang, Jia, Nan, Chen, Yang, "Global and Local Mixture Consistency Cumulative
Learning for Long-tailed Visual Recognitions", CVPR 2023 (arXiv 2305.08661).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from glmc.data.batch import BatchSpec, TwoStreamBatch
from glmc.methods.base import CUTMIX_LABELS, METHODS, MethodOptions, Needs, SearchRange, StepResult, require
from glmc.methods.losses import class_weights, cumulative_alpha, simsiam_loss, soft_cross_entropy
from glmc.mixing import box_area_fraction, cutmix, cutmix_box, mixed_targets, mixup, sample_lambda
from glmc.models.output import GLMCOutput


@dataclass(frozen=True)
class GLMCOptions(MethodOptions):
    """GLMC's options; the defaults reproduce the authors' code."""

    # lambda ~ Beta(beta, beta). The authors' code always uses Beta(1, 1), whatever its
    # --beta flag says; set 0.5 for the paper's stated variant.
    beta: float = 1.0
    # tau: class weights n_k^-tau for the re-balanced head's labels (--label_weighting).
    label_weighting: float = 1.2
    # gamma: weight of the SimSiam global-local consistency loss.
    consistency_weight: float = 1.0
    # How the CutMix soft label splits between the two images: "lambda" (authors' code)
    # or "area" (the clipped box's actual pixel share, as in the CutMix paper).
    cutmix_label: str = "lambda"
    # Both mixed batches through the encoder as one batch of 2N (faster on a GPU). Not the
    # authors' computation: BatchNorm then normalises over both batches together.
    joint_forward: bool = False
    # glmc tune: tau, gamma and the re-sampled stream's q around the authors' values (tau 1.0-1.2,
    # gamma 1-10, q 0-0.2 in their published runs); beside the learning rate and weight decay every method has.
    search_space: ClassVar[dict[str, SearchRange]] = {
        "method.label_weighting": SearchRange(0.0, 2.0),
        "method.consistency_weight": SearchRange(0.1, 10.0, log=True),
        "train.resample_weighting": SearchRange(0.0, 1.0),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        # `not x >= 0` rather than `x < 0` so that NaN is rejected too.
        require(self.beta > 0, f"method.beta must be > 0 (lambda ~ Beta(beta, beta)), got {self.beta}")
        require(self.label_weighting >= 0, f"method.label_weighting (tau) must be >= 0, got {self.label_weighting}")
        require(self.consistency_weight >= 0, f"method.consistency_weight (gamma) must be >= 0, got {self.consistency_weight}")
        require(self.cutmix_label in CUTMIX_LABELS,
                f"method.cutmix_label must be one of {', '.join(CUTMIX_LABELS)}, got {self.cutmix_label!r}")


@METHODS.register("glmc")
class GLMC:
    """The GLMC objective for one step:

        L = alpha * L_CE + (1 - alpha) * L_cb + gamma * L_sim,   alpha = 1 - (T / T_max)^2

    with the global batch `x_g = mixup(uniform.view1, resampled.view1)` and the local
    batch `x_l = cutmix(uniform.view2, resampled.view2)` sharing one `lam`;
    `L_CE` is soft cross-entropy of `fc` on both, `L_cb` that of `fc_cb` with
    class-weighted labels, `L_sim = -cos(p_g, sg(z_l)) - cos(p_l, sg(z_g))`.

    The four class attributes below switch parts off; the paper's ablations
    (`glmc.methods.glmc_ablations`) are subclasses that set one of them.
    """

    Options = GLMCOptions
    global_mixture = True  # the MixUp branch x_g
    local_mixture = True  # the CutMix branch x_l
    consistency = True  # gamma * L_sim (needs both branches)
    cumulative = True  # alpha = 1 - (T / T_max)^2 and L_cb; False fixes alpha = 1

    def __init__(self, config: GLMCOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.config = config
        self.total_epochs = total_epochs
        self.num_classes = len(class_counts)
        self.class_weights = class_weights(class_counts, config.label_weighting)  # K
        self.needs = self._needs()

    def _needs(self) -> Needs:
        """Both streams; view 1 for the global mixture, view 2 for the local one; fc for L_CE (fc_cb
        when alpha is fixed at 1), fc_cb for L_cb, projection and predictor for L_sim."""
        views = (1,) * self.global_mixture + (2,) * self.local_mixture
        heads = {"fc_cb"} | ({"fc"} if self.cumulative else set())
        if self.consistency and len(views) == 2:
            heads |= {"projection", "predictor"}
        return Needs(BatchSpec(resampled=True, views=views), frozenset(heads))

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        uniform, resampled = batch.uniform, batch.resampled
        # lam and the box are drawn by every variant, so one seed gives them all the same mixtures.
        lam = sample_lambda(rng, self.config.beta)
        height, width = next(view for view in (uniform.view1, uniform.view2) if view is not None).shape[-2:]
        box = cutmix_box(height, width, lam, rng)
        labels = (uniform.labels, resampled.labels)
        inputs, shares = [], []  # mixed batches, and the uniform image's share of each one's label
        if self.global_mixture:
            inputs.append(mixup(uniform.view1, resampled.view1, lam))  # N x C x H x W
            shares.append(lam)
        if self.local_mixture:
            inputs.append(cutmix(uniform.view2, resampled.view2, box))  # N x C x H x W
            shares.append(self._cutmix_lambda(lam, box, height, width))
        branches = list(zip(self._forward(model, inputs), shares))

        alpha = cumulative_alpha(epoch, self.total_epochs) if self.cumulative else 1.0
        ce = sum(
            soft_cross_entropy(self._ce_logits(out), mixed_targets(*labels, share, self.num_classes))  # N x K targets
            for out, share in branches
        )
        loss = alpha * ce
        parts = {"ce": ce.detach()}
        if self.cumulative:
            weights = self._weights_on(uniform.labels.device)
            cb = sum(
                soft_cross_entropy(out.logits, mixed_targets(*labels, share, self.num_classes, weights))
                for out, share in branches
            )
            loss = loss + (1.0 - alpha) * cb
            parts["cb"] = cb.detach()
        if self.consistency and len(branches) == 2:
            (out_g, _), (out_l, _) = branches
            sim = simsiam_loss(out_g.p, out_l.z) + simsiam_loss(out_l.p, out_g.z)
            loss = loss + self.config.consistency_weight * sim
            parts["sim"] = sim.detach()
        parts |= {"alpha": _scalar(alpha, loss), "lam": _scalar(lam, loss)}
        return StepResult(loss=loss, parts=parts)

    def _ce_logits(self, out) -> Tensor:
        """The head L_CE trains: `fc`, or, when alpha is fixed at 1 and L_cb is gone, the prediction head.

        With alpha = 1 the paper's fc_cb would never be trained, and glmc predicts with fc_cb;
        training fc_cb with L_CE instead is the same model with its classifiers renamed.
        """
        return out.logits_fc if self.cumulative else out.logits

    def _forward(self, model: nn.Module, inputs: list[Tensor]) -> list[GLMCOutput]:
        """One forward pass per mixed batch (the authors'), or one over all of them (`joint_forward`).

        The joint pass is the same function wherever the model treats samples independently;
        BatchNorm in training mode does not (it normalises over the 2N images together), hence
        an option, off by default.
        """
        if not (self.config.joint_forward and len(inputs) > 1):
            return [model(x) for x in inputs]
        joint = model(torch.cat(inputs))  # every computed field: (len(inputs) N) x ...
        chunks = [[None] * len(inputs) if field is None else field.chunk(len(inputs)) for field in joint]
        return [GLMCOutput(*fields) for fields in zip(*chunks)]

    def _cutmix_lambda(self, lam: float, box: tuple[int, int, int, int], height: int, width: int) -> float:
        """The uniform image's share of the CutMix label."""
        if self.config.cutmix_label == "area":
            return 1.0 - box_area_fraction(box, height, width)
        return lam  # authors' code: the drawn lam, whatever the clipped box covers

    def _weights_on(self, device: torch.device) -> Tensor:
        # Moved once and cached, so later steps do no host-to-device copy.
        if self.class_weights.device != device:
            self.class_weights = self.class_weights.to(device)
        return self.class_weights


def _scalar(value: float, like: Tensor) -> Tensor:
    # torch.full launches a fill kernel on `like`'s device: no host-device copy or sync.
    return torch.full((), value, dtype=like.dtype, device=like.device)
