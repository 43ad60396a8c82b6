"""The four GLMC heads on the pooled feature `h` (METHOD.md section 2)."""

from __future__ import annotations

from torch import Tensor, nn

from glmc.models.output import GLMCOutput


class GLMCHeads(nn.Module):
    """Classifier, re-balanced classifier, projection and predictor on a pooled feature.

    Input: `h`, N x d pooled features. Output: a `GLMCOutput` with `logits` = fc_cb(h)
    (N x K, used for prediction), `logits_fc` = fc(h) (N x K), `z` = projection(h)
    (N x e), `p` = predictor(z) (N x e) and `feature` = h (N x d).
    """

    def __init__(self, feature_dim: int, num_classes: int, projection_dim: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, num_classes)  # classifier C, trained with L_CE
        self.fc_cb = nn.Linear(feature_dim, num_classes)  # re-balanced, trained with L_cb
        self.projection = nn.Linear(feature_dim, projection_dim)
        self.predictor = nn.Linear(projection_dim, projection_dim)

    def forward(self, h: Tensor) -> GLMCOutput:
        logits = self.fc_cb(h)  # N x d -> N x K
        logits_fc = self.fc(h)  # N x d -> N x K
        z = self.projection(h)  # N x d -> N x e
        p = self.predictor(z)  # N x e -> N x e
        return GLMCOutput(logits=logits, logits_fc=logits_fc, z=z, p=p, feature=h)
