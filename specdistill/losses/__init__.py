"""Reference (eager) distillation losses; the fused kernels' twins and the CPU path."""

from specdistill.losses.reference import (
    DIVERGENCES,
    distill_loss,
    divergence_per_row,
    expected_acceptance,
)

__all__ = ["DIVERGENCES", "distill_loss", "divergence_per_row", "expected_acceptance"]
