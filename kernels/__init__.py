"""Triton kernels, one module per op family (imported as vtreid.kernels.<family>).

Importing a module here imports triton, so set TRITON_INTERPRET=1 first when running on CPU tensors.
The modules compute only; input checks, backend choice and autograd live in vtreid.ops.
"""
