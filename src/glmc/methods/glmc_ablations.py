"""The ablations of GLMC (Du et al., CVPR 2023, the paper's ablation study): one part removed each.

Each is the `GLMC` class with one switch turned off, so every other line is the same code
and one seed gives the same lambda and CutMix box. The terms are those of the full loss
(docs/method.md):

    L = alpha * L_CE + (1 - alpha) * L_cb + gamma * L_sim,   alpha = 1 - (T / T_max)^2
"""

from __future__ import annotations

from glmc.methods.base import METHODS
from glmc.methods.glmc import GLMC


@METHODS.register("glmc-no-consistency")
class GLMCWithoutConsistency(GLMC):
    """GLMC without the consistency loss: `L = alpha L_CE + (1 - alpha) L_cb` (gamma = 0, L_sim not computed)."""

    consistency = False


@METHODS.register("glmc-no-cumulative")
class GLMCWithoutCumulative(GLMC):
    """GLMC without the cumulative re-balanced loss: alpha fixed at 1, `L = L_CE + gamma L_sim`.

    There is no re-balanced classifier to train, so L_CE trains the prediction head (see
    `GLMC._ce_logits`); the class weights (method.label_weighting) are unused.
    """

    cumulative = False


@METHODS.register("glmc-global-only")
class GLMCGlobalOnly(GLMC):
    """GLMC with the global mixture (MixUp of the two streams) only:
    `L = alpha L_CE(x_g) + (1 - alpha) L_cb(x_g)`.

    The consistency loss compares the global and the local batch, so it goes with the local one.
    """

    local_mixture = False


@METHODS.register("glmc-local-only")
class GLMCLocalOnly(GLMC):
    """GLMC with the local mixture (CutMix of the two streams) only:
    `L = alpha L_CE(x_l) + (1 - alpha) L_cb(x_l)`.

    The consistency loss compares the global and the local batch, so it goes with the global one.
    """

    global_mixture = False
