"""Checkpoints that survive a kill at any moment: written beside, then swapped in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_shard(path: Path, tensors: dict) -> None:
    """A safetensors file written whole: beside, then renamed. A kill mid-write leaves only a
    ``.tmp`` that the next run rewrites, so a run that skips existing shards never reads half of one."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp)
    tmp.rename(path)


def save_checkpoint(path: Path, draft, tokenizer, optimizer, step: int, history: list) -> None:
    """Weights in HF format plus trainer state, swapped in whole (``replace_dir``)."""

    def write(tmp: Path) -> None:
        draft.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / "trainer_state.pt")
        (tmp / "history.json").write_text(json.dumps(history))

    replace_dir(path, write)


def replace_dir(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a directory beside ``path``, which is then swapped in, so a
    kill during saving never corrupts the last good copy (see ``recover_checkpoint``
    for a kill between the two renames)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    recover_checkpoint(path)
    if tmp.exists():  # a half-written copy from a killed save
        _remove_tree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if path.exists():
        path.rename(old)
    tmp.rename(path)  # a kill just before this leaves old (good) and tmp (complete)
    if old.exists():
        _remove_tree(old)


def recover_checkpoint(path: Path) -> None:
    """Finish a save that was killed between its two renames. ``path.old`` only exists
    once ``path.tmp`` was complete, so with ``path`` missing the newer complete copy
    is tmp, else old."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        if tmp.exists():
            tmp.rename(path)
            _remove_tree(old)
        else:
            old.rename(path)
    elif path.exists() and old.exists():
        _remove_tree(old)


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        _remove_tree(child) if child.is_dir() else child.unlink()
    path.rmdir()
