"""Llama's RMS norm and rotary embedding, shared by the lean runner and the EAGLE-3 head."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps: float):
    """As LlamaRMSNorm: normalize in float32, cast back, then scale."""
    if x.dtype == weight.dtype == torch.float32:  # the same products, in one op
        return F.rms_norm(x, (x.shape[-1],), weight, eps=eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def apply_rotary(x, cos, sin):
    """Rotary embeddings on x [B, heads, T, D] with cos, sin [B, T, D] (HF's rotate_half form)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]
