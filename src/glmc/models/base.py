"""Models: an encoder (images -> pooled features) with GLMC's heads on it, built by name.

`create_model("resnet32", num_classes=10)` builds the registered encoder `resnet32` and wraps it
with `GLMCHeads` (`with_heads`). An encoder is any `nn.Module` whose forward maps images
N x 3 x H x W to features N x d and that says d as `feature_dim`; it registers itself with
`@BACKBONES.register(name)` on a constructor that takes no arguments. Two attributes are optional:
`projection_dim`, the width of GLMC's projection and predictor (128 unless the encoder says
otherwise; the authors' ImageNet networks use 256), and `init_weights(heads)`, which `with_heads`
calls once the heads exist, for an encoder that initialises the whole network, heads included, the
way its authors did. The built-in encoders (cifar_resnet.py, imagenet_resnet.py) are imported by
`glmc/models/__init__.py`.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from glmc.errors import ConfigError
from glmc.models.heads import CLASSIFIERS, GLMCHeads
from glmc.models.output import GLMCOutput
from glmc.registry import Registry

BACKBONES: Registry[Callable[[], nn.Module]] = Registry("backbone")
DEFAULT_PROJECTION_DIM = 128


class GLMCModel(nn.Module):
    """An encoder with GLMC's heads. Input: images N x 3 x H x W. Output: `GLMCOutput` (its `logits`,
    fc_cb's, are what evaluation predicts with)."""

    def __init__(self, encoder: nn.Module, heads: GLMCHeads) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.register_load_state_dict_pre_hook(nest_encoder_keys)

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def forward(self, x: Tensor) -> GLMCOutput:
        return self.heads(self.encoder(x))  # N x 3 x H x W -> N x d -> GLMCOutput


def nest_encoder_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load a state dict written when the built-in networks held their heads themselves: its encoder weights
    sit at the top level (`stem.0.weight`) and move under `encoder.` (the committed results' weights and
    checkpoints are such files)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if not key[len(prefix):].startswith(("encoder.", "heads.")):
            state_dict[f"{prefix}encoder.{key[len(prefix):]}"] = state_dict.pop(key)


def with_heads(encoder: nn.Module, num_classes: int, classifier: str = "linear", logit_scale: float = 1.0) -> GLMCModel:
    """`encoder` with GLMC's heads for `num_classes` classes; `classifier` is the kind of the prediction head
    fc_cb: "linear", or "cosine" (LDAM's normalised classifier, Cao et al. 2019); `logit_scale` multiplies its
    outputs (the method's `MethodOptions.logit_scale`: LDAM's s)."""
    feature_dim = getattr(encoder, "feature_dim", None)
    if not isinstance(feature_dim, int) or feature_dim < 1:
        raise ConfigError(f"encoder {type(encoder).__name__} must give its feature size as a positive int `feature_dim`, "
                          f"got {feature_dim!r}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    CLASSIFIERS.get(classifier)
    heads = GLMCHeads(feature_dim, num_classes, getattr(encoder, "projection_dim", DEFAULT_PROJECTION_DIM), classifier,
                      logit_scale)
    if hasattr(encoder, "init_weights"):
        encoder.init_weights(heads)
    return GLMCModel(encoder, heads)


def create_model(name: str, num_classes: int, classifier: str = "linear", logit_scale: float = 1.0) -> GLMCModel:
    """The registered encoder `name` with GLMC's heads for `num_classes` classes (`with_heads`)."""
    return with_heads(BACKBONES.get(name)(), num_classes, classifier, logit_scale)
