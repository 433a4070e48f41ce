"""fp32 linears with their weights prepacked once for oneDNN, as vLLM's CPU build does.

``F.linear`` hands each call's plain [N, K] weight to MKL's GEMM, which on AMD CPUs takes a
generic path and repacks the weight on every call. oneDNN's packed layout is built once, at
load; each call then streams it straight into its micro-kernels. On the 2-core EPYC (AVX2) a
step of the default target in fp32 takes 1.5x less time for one token, 1.5x less for 16 rows
of one token (``python bench/bench_linears.py``). PyTorch ships the op its own compiler uses
for this (``torch.ops.mkldnn._linear_pointwise``), so nothing is built here.

A bf16 target on a CPU without bf16 instructions keeps its bf16 weights for one token (a
matrix-vector product, bound by memory) and the AVX2 kernel for a few (``cpu_linear``), and
multiplies many tokens at once in fp32 through packed copies of its weights widened to fp32:
exact, since every bf16 value is an fp32 value, and rounded back to bf16 as PyTorch's kernels
do. The copies cost memory: the fp32 weights once more (twice the bf16 model's size), so set
``SPECDISTILL_PACKED_LINEARS=0`` where memory is short.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# The number of token rows oneDNN picks its layout for; measured on the default target, 16
# serves 1 to 80 tokens as well as any other hint or better.
_ROWS_HINT = 16


class PackedWeight:
    """A linear's weight and its oneDNN-packed fp32 copy. ``weight`` stays the caller's tensor
    (for the paths that read it directly and for autograd)."""

    __slots__ = ("weight", "packed")

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), _ROWS_HINT)

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape


def pack(weight: torch.Tensor) -> PackedWeight:
    """The packed copy of ``weight``, made once per weight and version: runners built again on
    the same model share it, and a weight changed in place since is packed anew."""
    return _once_per_version(weight, "_specdistill_packed", PackedWeight)


def pack_bf16(weight: torch.Tensor) -> torch.Tensor:
    """A bf16 weight packed once for oneDNN's bf16 linear (AMX or AVX512-BF16 code), for ``cpu_layer``'s
    C++ layers on CPUs with bf16 instructions; made once per weight and version, as ``pack``."""
    return _once_per_version(weight, "_specdistill_packed_bf16", lambda w: torch.ops.mkldnn._reorder_linear_weight(
        w.detach().contiguous(), _ROWS_HINT))


class PackedBf16Weight:
    """A bf16 linear's weight and its copy packed for oneDNN's bf16 linear (``pack_bf16``), for CPUs with
    bf16 instructions; ``weight`` stays the caller's tensor."""

    __slots__ = ("weight", "packed")

    def __init__(self, weight: torch.Tensor):
        self.weight, self.packed = weight, pack_bf16(weight)

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape


def packed_bf16_linear(x: torch.Tensor, weight: PackedBf16Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight.weight, bias)`` for a bf16 ``x`` through the packed weight: the same values (oneDNN's
    bf16 linear either way), without the per-call reorder of the plain weight: the default target's LM head
    over 1-11 tokens took 1.6-1.8 ms against 2.7-3.0 on a 2-vCPU Xeon with AMX, a one-token step 0.94-0.96x
    (``bench/results/2026-12-06-s20/``). Under autograd, or for another dtype, it is ``F.linear`` itself."""
    if x.dtype != torch.bfloat16 or (torch.is_grad_enabled() and (x.requires_grad or weight.weight.requires_grad)):
        return F.linear(x, weight.weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.packed, bias, "none", [], "")


def _once_per_version(weight: torch.Tensor, attribute: str, make):
    """``make(weight)``, kept on the weight under ``attribute`` until the weight changes in place."""
    version = None if weight.is_inference() else weight._version  # inference tensors keep no version
    cached = getattr(weight, attribute, None)
    if cached is not None and cached[0] == version:
        return cached[1]
    made = make(weight)
    setattr(weight, attribute, (version, made))
    return made


def packed_linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight.weight, bias)`` in fp32 through the packed weight; a bf16 ``x`` is
    widened and the result rounded back to bf16. Under autograd, with anything that needs a
    gradient, it is ``F.linear`` itself (the packed copy is not a parameter)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.weight.requires_grad):
        return F.linear(x, weight.weight, bias)
    dtype = x.dtype
    if bias is not None:
        bias = bias.float()
    out = torch.ops.mkldnn._linear_pointwise(x.float().contiguous(), weight.packed, bias, "none", [], "")
    return out if dtype == torch.float32 else out.to(dtype)


def available(weight: torch.Tensor) -> bool:
    """Whether this weight can be packed: on a CPU, fp32 or bf16, with PyTorch's oneDNN ops, and
    ``SPECDISTILL_PACKED_LINEARS`` not set to 0."""
    if os.environ.get("SPECDISTILL_PACKED_LINEARS", "1") == "0":
        return False
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return False
    return _ops_work()


@functools.cache
def _ops_work() -> bool:
    """The ops exist and agree with ``F.linear`` on a small case (once per process)."""
    try:
        weight, x = torch.randn(24, 16), torch.randn(3, 16)
        out = packed_linear(x, PackedWeight(weight))
    except (AttributeError, RuntimeError) as err:  # a build without oneDNN, or ops that moved
        log.warning("oneDNN packed linears are unavailable (%s); F.linear serves", err)
        return False
    return torch.allclose(out, F.linear(x, weight), atol=1e-4, rtol=1e-4)
