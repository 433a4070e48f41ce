"""A record's target states on disk: what an EAGLE-3 head trains on, per (prompt, answer) record.

For each position of the record's tokens, the hidden states entering the head's layers
concatenated (its features, [n, len(layers) * H]) and the final normed hidden state ([n, H],
from which the teacher's logits are one matmul). ``specdistill serve --capture-features``
writes them as it serves (the target computes them anyway), and ``specdistill adapt`` computes
those it lacks, once, so a head is fine-tuned on captured traffic without running the target
over it again.

One safetensors file per record, named by the record's key (a hash of its prompt and answer
ids), in a folder: a folder grows record by record, and any number of them can be read together.
The file's metadata names the head's layers and the target; states for other layers or of another
target are not used. They reveal what the records hold: keep them as you keep the capture.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def record_key(prompt_ids: list[int], answer_ids: list[int]) -> str:
    """The key of a (prompt, answer) record: the same ids give the same key, in any process."""
    digest = hashlib.sha256(",".join(map(str, prompt_ids)).encode())
    digest.update(b"|" + ",".join(map(str, answer_ids)).encode())
    return digest.hexdigest()[:24]


def states_path(folder: str | Path, key: str) -> Path:
    return Path(folder) / f"{key}.safetensors"


def save_states(folder: str | Path, key: str, features: torch.Tensor, final: torch.Tensor,
                layer_ids: list[int], target: str) -> Path:
    """Write a record's states, whole (beside, then renamed: a reader never sees half a file)."""
    path = states_path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({"features": features.contiguous(), "final": final.contiguous()}, str(partial),
              metadata={"layer_ids": ",".join(map(str, layer_ids)), "target": target})
    partial.replace(path)
    return path


def load_states(folders: list[str | Path], key: str, layer_ids: list[int], target: str,
                least: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A record's (features, final) from the first of ``folders`` that holds them for these layers and this
    target, over at least ``least`` positions; None if none does."""
    wanted = {"layer_ids": ",".join(map(str, layer_ids)), "target": target}
    for folder in folders:
        path = states_path(folder, key)
        if not path.exists():
            continue
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if any(metadata.get(name) != value for name, value in wanted.items()):
                continue
            if handle.get_slice("final").get_shape()[0] < least:
                continue
            return handle.get_tensor("features"), handle.get_tensor("final")
    return None
