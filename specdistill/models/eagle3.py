"""An EAGLE-3-style draft head: a feature-conditioned draft that reads the target's own hidden states.

The head at sequence slot s reads two things: the target's hidden states at position s from
a few layers (low, middle, high), concatenated [3H] and projected by ``fc`` to H, and the
embedding of token s + 1 (the token the target chose there). One decoder layer, whose
q/k/v projections take [norm(embedding); norm(feature)] (2H wide), turns them into h_s; the
final norm and a reduced LM head over a draft vocabulary give its guess of token s + 2.
Drafting further, the head feeds its own h_s as the feature of slot s + 1, with the token it
just drafted. Training-time test (``ttt_logits``) unrolls exactly that, so the head learns
to draft from its own features as it will at inference.

The weights and their names follow vllm-project/speculators' Eagle3 format (``fc``,
``layers.0.*`` with ``hidden_norm``, ``norm``, ``lm_head``, ``d2t``/``t2d``), so an exported
head loads in vLLM (``specdistill.models.eagle3_io``). The token embeddings are the target's,
shared and frozen, and never saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from specdistill.models.checks import vocab_size
from specdistill.models.draft_vocab import ranked_token_ids
from specdistill.models.layers import apply_rotary, rms_norm


def default_layer_ids(num_layers: int) -> list[int]:
    """speculators' and vLLM's default: low, middle and high (hidden_states[i] = input of layer i)."""
    return [2, num_layers // 2, num_layers - 3] if num_layers >= 6 else [0, num_layers // 2, num_layers - 1]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class _Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, bias = config.hidden_size, getattr(config, "attention_bias", False)
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.heads
        self.q_proj = nn.Linear(2 * hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(2 * hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(2 * hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)

    def project(self, x, cos, sin):
        """q [B, heads, T, D] and k, v [B, kv_heads, T, D] of x [B, T, 2H], rotated."""
        batch, width, _ = x.shape
        q = self.q_proj(x).view(batch, width, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, width, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, width, self.kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q, keys, values, mask, out_dtype: torch.dtype | None = None):
        """Attention in the keys' dtype (a runner's cache may be fp32 under bf16 weights), its output
        cast to ``out_dtype`` (default: unchanged) before the out projection."""
        out = F.scaled_dot_product_attention(q.to(keys.dtype), keys, values, attn_mask=mask,
                                             enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).flatten(2).to(out_dtype or out.dtype))


class _MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Eagle3Layer(nn.Module):
    """The head's decoder layer: attention over [norm(embedding); norm(feature)], residual on the feature."""

    def __init__(self, config, norm_before_residual: bool = False):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.hidden_norm = RMSNorm(config.hidden_size, eps)
        self.self_attn = _Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = _MLP(config)
        self.norm_before_residual = norm_before_residual

    def qkv(self, embeds, feature, cos, sin):
        """(q, k, v, residual) for embeds and features [B, T, H]."""
        normed = self.hidden_norm(feature)
        residual = normed if self.norm_before_residual else feature
        return *self.self_attn.project(torch.cat([self.input_layernorm(embeds), normed], -1), cos, sin), residual

    def finish(self, attended, residual):
        x = residual + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class Eagle3Head(nn.Module):
    """The head (see the module doc). ``layer_config`` is a Llama-style config of the
    target (the head's layer has its sizes); ``draft_ids`` the target token ids the head
    predicts (ascending); ``layer_ids`` which of the target's hidden states it reads.
    ``embed_weight`` is the target's input embedding, shared (never saved)."""

    def __init__(self, layer_config, layer_ids: list[int], draft_ids: torch.Tensor, embed_weight: torch.Tensor,
                 norm_before_residual: bool = False, target_name: str = ""):
        super().__init__()
        self.source = None  # the directory it was loaded from (``load_head``), if any
        hidden, vocab = layer_config.hidden_size, layer_config.vocab_size
        draft_ids = torch.as_tensor(draft_ids, dtype=torch.long).flatten()
        _check_draft_ids(draft_ids, vocab)
        if tuple(embed_weight.shape) != (vocab, hidden):
            raise ValueError(f"the target's embeddings are {tuple(embed_weight.shape)}, the head expects "
                             f"({vocab}, {hidden}): use the target the head was made for")
        self.layer_config, self.layer_ids, self.target_name = layer_config, list(layer_ids), target_name
        self.fc = nn.Linear(len(layer_ids) * hidden, hidden, bias=False)
        self.layers = nn.ModuleList([Eagle3Layer(layer_config, norm_before_residual)])
        self.norm = RMSNorm(hidden, layer_config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, len(draft_ids), bias=False)
        self.register_buffer("d2t", draft_ids - torch.arange(len(draft_ids)))  # target id = index + d2t[index]
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[draft_ids] = True
        self.register_buffer("t2d", t2d)
        self.register_buffer("embed_weight", embed_weight.detach(), persistent=False)
        self.rotary = LlamaRotaryEmbedding(layer_config)

    @classmethod
    def for_target(cls, target, draft_ids, layer_ids: list[int] | None = None, seed: int = 0) -> Eagle3Head:
        """A fresh head for a Llama-family target: its layer sizes, its embeddings, and the
        layer copied from the target's last decoder layer where shapes allow (a warm start)."""
        if not hasattr(getattr(target, "model", None), "layers") or not hasattr(target.config, "rms_norm_eps"):
            raise ValueError(f"an EAGLE-3 head is built for Llama-family targets (Llama, Mistral, Qwen2, SmolLM), "
                             f"not {type(target).__name__}; use draft_type lm for this target")
        config = AutoConfig.for_model(**target.config.to_dict())
        layers = target.config.num_hidden_layers
        layer_ids = default_layer_ids(layers) if layer_ids is None else list(layer_ids)
        if not layer_ids or any(not 0 <= i < layers for i in layer_ids):
            raise ValueError(f"layer_ids {layer_ids} must be hidden-state indices in [0, {layers})")
        torch.manual_seed(seed)
        head = cls(config, layer_ids, draft_ids, target.get_input_embeddings().weight,
                   target_name=getattr(target.config, "name_or_path", "") or "")
        head.to(dtype=target.dtype, device=target.device)
        _warm_start(head, target)
        return head

    @property
    def draft_ids(self) -> torch.Tensor:
        return torch.arange(len(self.d2t), device=self.d2t.device) + self.d2t

    @property
    def vocab_size(self) -> int:
        return self.layer_config.vocab_size

    def embed(self, ids):
        return F.embedding(ids, self.embed_weight)

    def logits(self, h):
        """Draft-vocabulary logits [..., V_draft] of the head's states h [..., H]."""
        return self.lm_head(self.norm(h))

    def full_logits(self, h):
        """Logits over the target's vocabulary: -inf outside the draft vocabulary (q = 0 there)."""
        small = self.logits(h)
        full = small.new_full((*small.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy_(-1, self.draft_ids, small)

    def ttt_logits(self, features, input_ids, steps: int) -> list[torch.Tensor]:
        """The draft logits of each step of ``ttt_states``."""
        return [self.logits(state) for state in self.ttt_states(features, input_ids, steps)]

    def ttt_states(self, features, input_ids, steps: int) -> list[torch.Tensor]:
        """Training-time test over whole rows: features [B, T, 3H] (the target's, at every
        position), ids [B, T]. Step j (1-based) at index c is the j-th draft of a block that
        starts after the target verified position c: it reads token c + j and, for j > 1, its
        own state from step j - 1 at c, and guesses token c + j + 1 (target logits at c + j).
        It attends to step 1's keys up to c (the verified slots) and to its own block's
        earlier steps at c, as it would at inference. Returns the head's states [B, T, H] of
        each step (``logits`` turns them into draft logits)."""
        keep = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        return [state.view(*input_ids.shape, -1) for state in self.ttt_states_at(features, input_ids, steps, keep)]

    def ttt_states_at(self, features, input_ids, steps: int, keep: torch.Tensor) -> list[torch.Tensor]:
        """``ttt_states`` at the positions ``keep`` [B, T] marks only: each step's states [N, H], in
        the order of ``keep.nonzero()``. Every position still goes through step 1's q/k/v
        projection (its keys and values are the verified slots all later positions attend to),
        about a fifth of a position's step; the attention, the MLP and the later steps run at the
        kept positions only.
        Training keeps the positions whose drafts count, so a long prompt costs little."""
        layer, (batch, width) = self.layers[0], input_ids.shape
        cols, valid = _kept_columns(keep)  # [B, n]: each row's kept positions, padded
        if cols.shape[1] == 0:
            return [features.new_zeros(0, self.layer_config.hidden_size) for _ in range(steps)]
        feature = self.fc(features)  # [B, T, H]
        cos, sin = self.rotary(feature, torch.arange(width, device=input_ids.device).expand(batch, width))
        # Step 1 at every position (slot c reads token c + 1): its keys and values are the verified slots;
        # its queries and residuals are kept where the states are wanted.
        q, keys, values, residual = layer.qkv(self.embed(F.pad(input_ids[:, 1:], (0, 1))), feature, cos, sin)
        q, residual = _at_columns(q, cols, 2), _at_columns(residual, cols, 1)
        seen = int(cols.max()) + 1  # no kept position attends past this
        keys, values = keys[:, :, :seen], values[:, :, :seen]
        causal = torch.arange(seen, device=cols.device)[None, None, :] <= cols[:, :, None]  # [B, n, seen]
        own = torch.eye(cols.shape[1], dtype=torch.bool, device=cols.device).expand(batch, -1, -1)
        out = []
        for j in range(1, steps + 1):
            if j > 1:  # reads token c + j at slot c + j - 1, and its own state; one more key per query
                tokens = F.pad(input_ids[:, j:], (0, j)).gather(1, cols)
                cos, sin = self.rotary(feature, cols + j - 1)
                q, k, v, residual = layer.qkv(self.embed(tokens), feature, cos, sin)
                keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
            mask = torch.cat([causal] + [own] * (j - 1), -1)[:, None]
            feature = layer.finish(layer.self_attn.attend(q, keys, values, mask), residual)
            out.append(feature[valid])
        return out

    def save_pretrained(self, path, **_) -> None:
        """Save in the speculators format (``save_head``), as checkpoints do."""
        save_head(self, path)


def _at_columns(x: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """x's entries at each row's columns ``cols`` [B, n] along ``dim`` (1 for [B, T, H], 2 for [B, heads, T, D])."""
    index = cols[:, None] if dim == 2 else cols
    shape = list(x.shape)
    shape[dim] = cols.shape[1]
    return x.gather(dim, index[..., None].expand(shape))


def _kept_columns(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's kept positions, ascending, padded to the longest row by repeating the row's last one:
    columns [B, n] and which of them are real [B, n]."""
    counts = keep.sum(1)
    width = int(counts.max()) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]  # kept first, in order
    valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    last = order.gather(1, (counts - 1).clamp(min=0)[:, None]) if width else order
    return torch.where(valid, order, last), valid


def check_head(target, head: Eagle3Head) -> None:
    """The head must be made for this target: same vocabulary, hidden size and enough layers."""
    config = target.config
    if head.vocab_size != vocab_size(target) or head.layer_config.hidden_size != config.hidden_size:
        raise ValueError(f"the draft head was made for a target with vocabulary {head.vocab_size} and hidden size "
                         f"{head.layer_config.hidden_size}; this target has {vocab_size(target)} and "
                         f"{config.hidden_size}")
    if max(head.layer_ids) >= config.num_hidden_layers:
        raise ValueError(f"the draft head reads hidden states {head.layer_ids}; this target has only "
                         f"{config.num_hidden_layers} layers")


def _check_draft_ids(ids: torch.Tensor, vocab: int) -> None:
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"the draft vocabulary must be a non-empty set of token ids in [0, {vocab})")
    if not bool((ids[1:] > ids[:-1]).all()):
        raise ValueError("the draft vocabulary's token ids must be ascending and distinct (sort them)")


def _warm_start(head: Eagle3Head, target) -> None:
    """The head's MLP, norms and o_proj from the target's last layer, its LM head from the
    target's rows of the draft vocabulary, and ``fc`` passing the highest layer read through
    unchanged: the head starts in the target's own representation space."""
    last = target.model.layers[-1]
    hidden = head.layer_config.hidden_size
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, -hidden:].copy_(torch.eye(hidden))
        layer = head.layers[0]
        layer.mlp.load_state_dict(last.mlp.state_dict())
        layer.self_attn.o_proj.weight.copy_(last.self_attn.o_proj.weight)
        layer.post_attention_layernorm.weight.copy_(last.post_attention_layernorm.weight)
        layer.input_layernorm.weight.copy_(last.input_layernorm.weight)
        head.norm.weight.copy_(target.model.norm.weight)
        head.lm_head.weight.copy_(target.get_output_embeddings().weight[head.draft_ids])


def draft_vocabulary(token_ids: torch.Tensor, vocab: int, size: int, always: list[int]) -> torch.Tensor:
    """The ``size`` most frequent ids of ``token_ids`` plus ``always`` (EOS: a head that cannot
    propose it drafts past the end), ascending."""
    ranked = ranked_token_ids(token_ids, vocab, always)
    return torch.tensor(sorted(ranked[: max(size, len(always))]))


def extend_vocabulary(head: Eagle3Head, target, token_ids: torch.Tensor, size: int) -> int:
    """Grow a trained head's draft vocabulary to ``size`` with the most frequent ids of ``token_ids``
    it lacks (a head fine-tuned on new traffic, say another language, cannot draft what its
    vocabulary lacks). The head's own LM-head rows stay; a new token's row is the target's, as in a
    fresh head. Returns how many ids were added."""
    have = head.draft_ids
    missing = [t for t in ranked_token_ids(token_ids, head.vocab_size, []) if not head.t2d[t]]
    missing = missing[: max(size - len(have), 0)]
    if not missing:
        return 0
    ids = torch.cat([have, torch.tensor(missing, device=have.device)]).sort().values
    weight = lm_head_rows(head, target, ids)
    head.lm_head = nn.Linear(weight.shape[1], len(ids), bias=False, device=weight.device, dtype=weight.dtype)
    head.lm_head.weight = nn.Parameter(weight)
    head.d2t = ids - torch.arange(len(ids), device=ids.device)
    head.t2d[ids] = True
    return len(missing)


@torch.no_grad()
def lm_head_rows(head: Eagle3Head, target, ids: torch.Tensor) -> torch.Tensor:
    """LM-head rows for the ascending target ids ``ids``: the head's own where its vocabulary has the
    id, the target's elsewhere (a new token's row in a fresh head)."""
    weight = target.get_output_embeddings().weight[ids].to(head.lm_head.weight)
    have = head.draft_ids
    found = torch.searchsorted(have, ids).clamp(max=len(have) - 1)
    known = have[found] == ids
    weight[known] = head.lm_head.weight[found[known]]
    return weight


SPECULATORS_VERSION = "0.3.0"  # the format version written (speculators' config schema)
HUB_NAMES = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # embedded targets' folders -> hub ids


def save_head(head: Eagle3Head, path: str | Path, speculative_tokens: int = 4, verifier: str = "") -> None:
    """Write ``head`` to the directory ``path`` (created) in the speculators format."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layer = AutoConfig.for_model(**head.layer_config.to_dict())
    layer.num_hidden_layers, layer.architectures = 1, ["LlamaForCausalLM"]
    layer = {"model_type": layer.model_type} | layer.to_diff_dict()  # as speculators writes it
    for key in ("quantization_config", "_name_or_path", "transformers_version", "pruned_from_layers", "dtype",
                "torch_dtype"):
        layer.pop(key, None)
    verifier = verifier or HUB_NAMES.get(Path(head.target_name).name, head.target_name)
    config = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION,
        "dtype": str(head.fc.weight.dtype).removeprefix("torch."),
        "transformer_layer_config": layer,
        "draft_vocab_size": len(head.d2t),
        "norm_before_residual": head.layers[0].norm_before_residual,
        "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": head.layer_ids,
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": head.layer_config.architectures
                         or ["LlamaForCausalLM"]},
        },
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    state = {key: value.detach().contiguous().cpu() for key, value in head.state_dict().items()}
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
