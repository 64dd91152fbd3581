"""vtreid: visible-infrared person re-identification with fused Triton and CUDA loss kernels."""
__version__ = "0.1.0"
