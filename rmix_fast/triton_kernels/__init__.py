"""Fused Triton kernels for R-Mix. Importing this module requires ``triton``."""
