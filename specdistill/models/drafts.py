"""One way to name a draft, everywhere a draft is taken (``--draft`` of serve, bench, demo):

    default                 the EAGLE-3 head shipped in this package for the default target
    prompt-lookup, ngram    model-free drafters (no weights)
    DIR                     an EAGLE-3 head directory (speculators format) or a causal-LM draft (HF directory)
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch

from specdistill.models.draft_vocab import load_draft_vocab
from specdistill.models.eagle3 import save_head
from specdistill.models.eagle3_io import is_head_dir, load_head
from specdistill.models.loading import load_model

DEFAULT_DRAFT = "default"
MODEL_FREE = ("prompt-lookup", "ngram")  # serve/src/model_free.py's methods (this layer does not import the engine)


def shipped_draft_dir() -> Path:
    """The folder of the shipped default draft, checked against its recorded checksum."""
    path = Path(str(resources.files("specdistill") / "default_draft"))
    weights, manifest = path / "model.safetensors", path / "checksum.json"
    if not weights.exists() or not manifest.exists():
        raise FileNotFoundError(f"the shipped default draft is missing from {path}; reinstall specdistill")
    expected = json.loads(manifest.read_text())["sha256"]
    if sha256(weights) != expected:
        raise ValueError(f"{weights} does not match its checksum {expected[:12]}...; reinstall specdistill")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_draft(spec: str) -> str | Path:
    """A model-free method's name as it is, else the draft's folder (``default`` included)."""
    if spec in MODEL_FREE:
        return spec
    if spec == DEFAULT_DRAFT:
        return shipped_draft_dir()
    path = Path(spec)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"draft {spec!r} is not a model directory; pass a trained draft (specdistill train), "
                                f"{DEFAULT_DRAFT} (the shipped head) or one of {', '.join(MODEL_FREE)}")
    return path


def load_draft(spec: str, target, dtype: torch.dtype | None = None, draft_vocab_size: int = 0):
    """(draft, draft vocabulary or None) for ``SpeculativeGenerator(target, draft, draft_vocab=...)``:
    a model-free method's name, an EAGLE-3 head on ``target``, or a causal LM in ``dtype``
    with its ``draft_vocab_size`` most frequent tokens (0 = its full vocabulary)."""
    where = resolve_draft(spec)
    if isinstance(where, str):
        return where, None
    if is_head_dir(where):
        try:
            return load_head(where, target, dtype), None
        except ValueError as err:
            if spec != DEFAULT_DRAFT:
                raise
            raise ValueError(f"the shipped default draft is for the default target (SmolLM2-135M-Instruct) only: "
                             f"{err}. Pass --draft DIR (a draft trained for this target), ngram, prompt-lookup "
                             "or none") from err
    draft = load_model(where, dtype or target.dtype).eval()
    return draft, load_draft_vocab(where, draft_vocab_size) if draft_vocab_size else None


def package_head(head_dir: str | Path, out: str | Path, target, card: str) -> Path:
    """A trained head as a shippable folder: bf16 weights (the shared embeddings are never
    stored), its config, ``card`` as README.md, and ``checksum.json`` (sha256 of the weights)."""
    out = Path(out)
    head = load_head(head_dir, target, torch.bfloat16)
    save_head(head, out)
    (out / "README.md").write_text(card)
    weights = out / "model.safetensors"
    (out / "checksum.json").write_text(json.dumps({"file": weights.name, "sha256": sha256(weights),
                                                   "bytes": weights.stat().st_size}, indent=2) + "\n")
    return out
