"""Training text available offline, cut into token chunks.

The default corpus is the Python standard library's own source (~30 MB of
code on every machine with Python). A folder or file of text works too.
"""

from __future__ import annotations

import logging
import random
import sysconfig
from pathlib import Path

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".json", ".jsonl"}


def stdlib_files() -> list[Path]:
    """The standard library's .py files, tests and site-packages left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "idle_test", "lib2to3"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def corpus_files(corpus: str) -> list[Path]:
    """Files of a corpus: ``"stdlib"``, a text file, or a folder searched for text files."""
    if corpus == "stdlib":
        files = stdlib_files()
    else:
        path = Path(corpus).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"corpus {corpus!r} is neither 'stdlib' nor an existing file or folder")
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
        )
    if not files:
        raise ValueError(f"corpus {corpus!r} holds no text files (looked for {sorted(TEXT_SUFFIXES)})")
    return files


def split_files(files: list[Path], heldout_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A reproducible train/held-out split by file, so no held-out text leaks into training."""
    shuffled = files[:]
    random.Random(seed).shuffle(shuffled)
    n_heldout = max(1, int(len(files) * heldout_fraction)) if heldout_fraction > 0 and len(files) > 1 else 0
    return shuffled[n_heldout:], shuffled[:n_heldout]


def token_chunks(tokenizer, texts, seq_len: int, max_tokens: int,
                 progress: bool = True) -> torch.Tensor:  # [num_chunks, seq_len]
    """Tokenize texts (strings, or paths of files to read) in order, EOS between them,
    until ``max_tokens``, then cut into chunks of ``seq_len`` tokens: short texts are
    packed together. Reading stops early, so a small budget is fast."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    count = 0
    bar = tqdm(total=max_tokens, desc="tokenizing", unit="tok", disable=not progress, leave=False)
    for item in texts:
        text = item.read_text(encoding="utf-8", errors="replace") if isinstance(item, Path) else item
        count += 1
        if not text.strip():
            continue
        new = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(new + ([eos] if eos is not None else []))
        bar.update(min(len(new) + 1, max_tokens - bar.n))
        if len(ids) >= max_tokens:
            break
    bar.close()
    n_chunks = min(len(ids), max_tokens) // seq_len
    if n_chunks == 0:
        raise ValueError(
            f"the corpus gave {len(ids)} tokens, fewer than one chunk of seq_len={seq_len}; "
            "add text or lower seq_len"
        )
    log.info("text: %d chunks of %d tokens from %d texts", n_chunks, seq_len, count)
    return torch.tensor(ids[: n_chunks * seq_len]).view(n_chunks, seq_len)
