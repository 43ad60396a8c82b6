"""Long-tailed datasets, their splits and loaders.

The registry and the `Dataset` interface live in `glmc.data.datasets`; the entries register
themselves when imported here: CIFAR-10/100-LT (`cifar_lt`), the image-file datasets
(`images`) and the embedded synthetic set (`synthetic`).
"""

from glmc.data import cifar_lt, images, synthetic  # noqa: F401  (importing registers them)
