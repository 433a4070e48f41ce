"""One decoder layer of a bf16 Llama in a single C++ call, for the few tokens of a decoding step on
an x86 CPU.

A step of the default target through PyTorch's eager ops runs about 35 of them a layer (norms
built from six ops each, rotary from eight, views, casts, slices): on 2 AVX2 cores those cost
~14 of a one-token step's ~31 ms, beside ~16 ms of weights streamed through the linears. Here
the norm, the q/k/v projection, rotary, the cache write, attention (PyTorch's own SDPA, called
from C++), the out projection, the residuals and the gated MLP run in one call, with the
linears through ``cpu_linear``'s kernel on CPUs without bf16 instructions, and through oneDNN's bf16
linear (AMX or AVX512-BF16 code, the op the eager path runs there) over weights packed once for it
(``packed_linear.pack_bf16``, as vLLM's CPU build does) on CPUs with them. Every
intermediate is rounded to bf16 where PyTorch's bf16 ops round it (after each linear, norm, activation
and residual add), so a layer gives the eager path's numbers up to the order of the sums. The caches
are fp32 on CPUs without bf16 instructions, where PyTorch's bf16 attention is emulated and a layer
attends in fp32, and bf16 on CPUs with them, where it attends in bf16 (a one-token step after 2,000
tokens reads half the bytes; the rotated keys are rounded to bf16 as the eager path's cache does).

Its C++ (``cpu_layer_source``) is built into the same extension as the kernel (``cpu_linear``);
``SPECDISTILL_CPU_KERNELS=0`` turns both off.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from specdistill.serve import cpu_linear, packed_linear

from specdistill.models.loading import native_bf16


def usable(layers) -> bool:
    """Whether ``decode_layer`` can run these layers (``llama_fast._Layer``): all bf16, on a CPU where the
    extension builds (over fp32 or bf16 caches: ``LlamaRunner`` picks)."""
    tensors = [t for layer in layers for t in (layer.input_norm, layer.post_norm, *_weights(layer))]
    return _layers_serve(tensors)


def decode_layer(x, layer, cos, sin, keys, values, slots, mask, span: int, eps: float, heads: int, kv_heads: int):
    """``x`` [B, T, H] bf16 through one layer; keys and values written at ``slots`` [B, T] of the caches
    [B, KV, S, D] (fp32 or bf16); ``mask`` [B, 1, T, span] bool, or None for SDPA's causal rule."""
    qkv, out, gate_up, down = _served(_weights(layer))
    return cpu_linear.extension().decode_layer_bf16(
        x.contiguous(), layer.input_norm, qkv, layer.qkv_bias, out, layer.post_norm, gate_up, down, cos.contiguous(),
        sin.contiguous(), keys, values, slots.contiguous(), mask, span, mask is None, eps, heads, kv_heads,
        _aten())


@dataclass
class HeadWeights:
    """An EAGLE-3 head's layer as ``eagle_layer`` takes it: q/k/v and gate/up fused (copies)."""

    input_norm: torch.Tensor
    hidden_norm: torch.Tensor
    qkv: torch.Tensor  # [(heads + 2 kv_heads) * head_dim, 2 H]
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    eps: float
    heads: int
    kv_heads: int
    norm_before_residual: bool


def head_weights(head) -> HeadWeights | None:
    """``head``'s layer for ``eagle_layer`` where it can run there (a bf16 head on a CPU the kernel
    serves), else None. The fused weights are copies: build them again after changing the head."""
    layer = head.layers[0]
    attention, mlp = layer.self_attn, layer.mlp
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    weights = HeadWeights(
        layer.input_layernorm.weight.detach(), layer.hidden_norm.weight.detach(),
        torch.cat([p.weight for p in projections]).detach(),
        None if attention.q_proj.bias is None else torch.cat([p.bias for p in projections]).detach(),
        attention.o_proj.weight.detach().contiguous(), layer.post_attention_layernorm.weight.detach(),
        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(), mlp.down_proj.weight.detach().contiguous(),
        layer.input_layernorm.eps, attention.heads, attention.kv_heads, layer.norm_before_residual)
    tensors = [weights.input_norm, weights.hidden_norm, weights.qkv, weights.out, weights.post_norm,
               weights.gate_up, weights.down]
    if not _layers_serve(tensors):
        return None
    weights.qkv, weights.out, weights.gate_up, weights.down = _served(
        (weights.qkv, weights.out, weights.gate_up, weights.down))
    return weights


def eagle_layer(embeds, feature, weights: HeadWeights, cos, sin, keys, values, slots, mask) -> torch.Tensor:
    """The head's layer over embeddings and features [B, T, H] bf16: keys and values written at
    ``slots`` [B, T] of the caches (fp32 or bf16), attending by ``mask`` [B, 1, T, S]; the states [B, T, H]."""
    w = weights
    return cpu_linear.extension().eagle_layer_bf16(
        embeds.contiguous(), feature.contiguous(), w.input_norm, w.hidden_norm, w.qkv, w.qkv_bias,
        w.out, w.post_norm, w.gate_up, w.down, cos.contiguous(), sin.contiguous(), keys, values,
        slots.contiguous(), mask.contiguous(), w.eps, w.heads, w.kv_heads, w.norm_before_residual, _aten())


def _layers_serve(tensors) -> bool:
    """All bf16 on a CPU where the extension builds."""
    return all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors) and cpu_linear.builds_for(
        tensors[0])


# On a CPU with bf16 instructions whose weights could not be packed (``SPECDISTILL_PACKED_LINEARS=0``), from
# this many tokens a step's linears go through PyTorch's bf16 linear (oneDNN over the plain weights), below it
# through our kernel: on a 2-vCPU Xeon with AMX a one-token step of the default target took 38.7 ms with
# oneDNN's linears and 31.6 with the kernel's, 11 tokens 50.8 and 59.5 (eager ops: 54-59). Packed weights
# serve every token count there: as fast as the kernel for 1 to 3 tokens and ~10% faster than the plain
# weights from 4 (``python bench/bench_verify_cost.py --compare-packing``).
ATEN_FROM_TOKENS = 4
NEVER = 2**62


@functools.cache
def _aten() -> int:
    """From how many rows the layers' linears go through PyTorch's bf16 linear (never without bf16 instructions)."""
    return ATEN_FROM_TOKENS if native_bf16("cpu") else NEVER


def _weights(layer) -> tuple[torch.Tensor, ...]:
    """The four projections' bf16 weights, whether ``prepare`` packed them or not."""
    return tuple(getattr(w, "weight", w) for w in (layer.qkv, layer.out, layer.gate_up, layer.down))


def _served(weights: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The weights as the C++ layer multiplies them: packed for oneDNN's bf16 linear on a CPU with bf16
    instructions (the C++ ``project`` takes any packed weight that way), else as they are."""
    return tuple(packed_linear.pack_bf16(w) for w in weights) if _packs_bf16() else weights


@functools.cache
def _packs_bf16() -> bool:
    return native_bf16("cpu") and packed_linear.available(torch.empty(0, dtype=torch.bfloat16))
