"""glmc: Global and Local Mixture Consistency Cumulative Learning (CVPR 2023)."""

__version__ = "0.1.0"
