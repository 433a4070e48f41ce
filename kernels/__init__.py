"""Fused Triton kernels for distillation losses (installed as ``specdistill.kernels``)."""
