"""The one type every backbone's forward returns."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class GLMCOutput(NamedTuple):
    """Outputs of a backbone with GLMC heads on its pooled feature `h`.

    Prediction and evaluation use `logits` (the re-balanced classifier `fc_cb`). A head the
    run's method does not use is not computed (`glmc.models.heads.use_heads`): its field is None.
    """

    logits: Tensor  # N x K, fc_cb(h): re-balanced classifier, used for prediction
    logits_fc: Tensor | None  # N x K, fc(h): classifier C of the paper
    z: Tensor | None  # N x e, projection(h)
    p: Tensor | None  # N x e, predictor(z)
    feature: Tensor  # N x d, pooled feature h
