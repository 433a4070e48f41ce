"""Fused Triton kernels for distillation losses (installed as ``specdistill.kernels``).

- ``fused_distill_loss``: softmax(T) + divergence + acceptance, forward and
  backward, on ``[N, V]`` logits (``fused_divergence.py``).
- ``fused_linear_distill_loss``: the same from the draft's hidden states and LM
  head, chunk by chunk, so the ``[N, V]`` student logits never exist (``fused_linear.py``).
- ``fused_sparse_distill_loss``: the teacher as top-k log-probs plus a tail
  bucket, for training from a cached teacher (``sparse_teacher.py``).

Each has an eager twin in ``specdistill.losses``; ``specdistill.losses.dispatch``
chooses between them. Triton is imported on first use, so this package imports
on machines without it (``triton_available()`` says whether it is there).
Set ``TRITON_INTERPRET=1`` before the first use to run the kernels on CPU tensors.
"""

from __future__ import annotations

import importlib
import importlib.util

_PUBLIC = {
    "fused_distill_loss": "fused_divergence",
    "fused_linear_distill_loss": "fused_linear",
    "fused_sparse_distill_loss": "sparse_teacher",
}

__all__ = [*_PUBLIC, "triton_available"]


def triton_available() -> bool:
    """Whether the ``triton`` package is importable (it is not on macOS or Windows)."""
    return importlib.util.find_spec("triton") is not None


def __getattr__(name: str):
    # Lazy: importing a kernel module imports triton and defines the @triton.jit kernels.
    if name in _PUBLIC:
        if not triton_available():
            raise ImportError(
                f"specdistill.kernels.{name} needs the triton package (Linux); "
                "use the eager path, specdistill.losses.compute_distill_loss(..., impl='torch')"
            )
        module = importlib.import_module(f"{__name__}.{_PUBLIC[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
