"""Distillation losses: the eager reference (the math and the CPU path), its chunked and
sparse-teacher twins, and the dispatch to the fused Triton kernels."""

from specdistill.losses.chunked import chunked_linear_distill_loss
from specdistill.losses.dispatch import (
    IMPLS,
    compute_distill_loss,
    compute_linear_distill_loss,
    compute_sparse_distill_loss,
)
from specdistill.losses.reference import (
    DIVERGENCES,
    distill_loss,
    divergence_per_row,
    expected_acceptance,
)
from specdistill.losses.sparse import sparse_distill_loss, sparse_expected_acceptance

__all__ = [
    "DIVERGENCES",
    "IMPLS",
    "chunked_linear_distill_loss",
    "compute_distill_loss",
    "compute_linear_distill_loss",
    "compute_sparse_distill_loss",
    "distill_loss",
    "divergence_per_row",
    "expected_acceptance",
    "sparse_distill_loss",
    "sparse_expected_acceptance",
]
