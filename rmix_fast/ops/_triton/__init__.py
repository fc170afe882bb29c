"""Triton kernels of the ops, one module per op (kernels and launchers). Importing any requires triton."""
