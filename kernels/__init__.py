"""Triton kernels, one module per op family (imported as vtreid.kernels.<family>).

Importing a module here imports triton, so set TRITON_INTERPRET=1 first when running on CPU tensors.
The modules compute only; input checks, backend choice and autograd live in vtreid.ops.
"""
import os

# FMA contraction stays on, as every Triton up to 3.9 compiled these kernels and as their tests and
# compile tables were made; Triton 3.9 warns on every compile while the variable is unset, and 3.10
# turns fusion off by default. Set it yourself to override.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
