"""Training data as the teacher sees it: the shared data settings (``DataConfig``) and
the rows they name (text chunks, target answers, dataset records)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from specdistill.data.batches import TokenRows, pack_records
from specdistill.data.builtin_prompts import prompt_texts
from specdistill.data.captured import is_capture_dir, read_capture
from specdistill.data.corpora import corpus_files, split_files, token_chunks
from specdistill.data.dataset_records import dataset_records, dataset_texts, is_dataset, read_dataset
from specdistill.models import DEFAULT_TARGET
from specdistill.options import option
from specdistill.teacher.target_answers import generate_answers


@dataclass
class DataConfig:
    """What the teacher reads and how: the target, the data, rows and the teacher's
    temperature and precision. ``specdistill train`` and ``cache-teacher`` share it."""

    target: str = option(DEFAULT_TARGET, "the embedded default or a local HF model directory")
    data: str = option("stdlib", "stdlib, target (its answers), a text file/folder, .jsonl, .parquet, a saved "
                                 "dataset, or a folder of traffic captured by `specdistill serve --capture`")
    text_field: str = option("text", "the text column of a dataset of plain text")
    replay: str = option("", "records (a dataset or capture folder) mixed into --data's records, so a draft adapting "
                             "to new traffic keeps what it knew: say, the data it was trained on")
    replay_share: float = option(0.3, "the share of the training records drawn from --replay")
    generate_tokens: int = option(40000, "with data 'target': answer tokens to generate (cached in output_dir)")
    answer_prompts: str = option("builtin:python", "with data 'target': the prompts it answers, comma-separated: "
                                                   "builtin (python + stdlib), builtin:python, builtin:stdlib, "
                                                   "builtin:code (made from this Python's library) or files")
    generate_temperature: float = option(0.8, "with data 'target': sampling temperature of the answers")
    seq_len: int = option(256, "tokens per training row")
    temperature: float = option(1.0, "softmax temperature T of both distributions (the soft loss is scaled by T^2)")
    bf16: bool = option(True, "bf16 autocast for both forwards where bf16 is native (GPUs; CPUs with AVX512-BF16 "
                              "or AMX); fp32 on other CPUs, where bf16 is emulated and several times slower")
    seed: int = option(0, "seeds the batch order, the draft's samples and the answers")
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:1...", resumable=True)

    def __post_init__(self):
        # Fail before loading anything: a typo should not cost a model load and tokenization.
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.generate_tokens < 1:
            raise ValueError(f"generate_tokens must be >= 1, got {self.generate_tokens}")
        if not self.generate_temperature >= 0:
            raise ValueError(f"generate_temperature must be >= 0 (0 = greedy), got {self.generate_temperature}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.replay_share < 1:
            raise ValueError(f"replay_share must be in (0, 1), got {self.replay_share}")


def read_data(config: DataConfig):
    """What ``config.data`` names, read without any model: the dataset and its kind, or
    the text files (None for the target's answers). Missing, empty or wrongly shaped
    data fails here, before any model loads."""
    if config.data == "target":
        prompt_texts(config.answer_prompts)  # a missing prompt file fails now
        source = None
    else:
        source = _dataset_of(config.data, config) or corpus_files(config.data)
    if config.replay:
        _replay_source(config)  # a bad replay fails now too
        if not (isinstance(source, tuple) and source[1] != "text"):
            raise ValueError("replay mixes records into records: --data must be a dataset of records or a capture "
                             "folder (not target or plain text)")
    return source


def _dataset_of(spec: str, config: DataConfig):
    """The dataset and its kind of a capture folder or a dataset file/folder; None for anything else."""
    if is_capture_dir(spec):
        return read_capture(spec, config.target), "ids"
    if is_dataset(spec):
        return read_dataset(spec, config.text_field)
    return None


def data_rows(config: DataConfig, target, tokenizer, max_tokens: int, workdir: Path, progress: bool = True,
              source=None) -> TokenRows:
    """The rows of ``config.data`` (``source``: what ``read_data`` returned, if it ran
    already): records (prompt, answer: only answer tokens count) from the target's
    answers (cached in ``workdir``) or a dataset, or plain text cut into chunks (up
    to ``max_tokens``)."""
    pad = pad_id(tokenizer)
    if config.data == "target":
        records = generate_answers(target, tokenizer, config.generate_tokens,
                                   cache=workdir / "target_answers.jsonl", prompts=prompt_texts(config.answer_prompts),
                                   temperature=config.generate_temperature, seed=config.seed, progress=progress)
        return pack_records(records, config.seq_len, pad)
    source = read_data(config) if source is None else source
    if isinstance(source, tuple):
        dataset, kind = source
        if kind == "text":
            texts = dataset_texts(dataset, config.text_field)
            return TokenRows.from_chunks(token_chunks(tokenizer, texts, config.seq_len, max_tokens, progress))
        records = dataset_records(dataset, kind, tokenizer)
        return pack_records(with_replay(records, config, tokenizer) if config.replay else records, config.seq_len, pad)
    files, _ = split_files(source, heldout_fraction=0.05, seed=config.seed)
    return TokenRows.from_chunks(token_chunks(tokenizer, files, config.seq_len, max_tokens, progress=progress))


def pad_id(tokenizer) -> int:
    return (tokenizer.eos_token_id if tokenizer is not None else None) or 0


def _replay_source(config: DataConfig):
    source = _dataset_of(config.replay, config)
    if source is None or source[1] == "text":
        raise ValueError(f"replay {config.replay!r} must hold records (prompt and answer), not plain text: .jsonl, "
                         ".parquet, a saved dataset or a capture folder")
    return source


def with_replay(records: list, config: DataConfig, tokenizer) -> list:
    """``records`` with ``--replay``'s records mixed in (``replay_share`` of the result, drawn at
    random, all of them if there are fewer), shuffled so every packed row holds both. The draw is a
    prefix of one seeded order of the pool, so more records replay a superset of fewer's (``adapt
    --every``: a cycle's replayed records' target states are read from the cycle before)."""
    dataset, kind = _replay_source(config)
    pool = dataset_records(dataset, kind, tokenizer)
    rng = random.Random(config.seed)
    wanted = round(len(records) * config.replay_share / (1 - config.replay_share))
    order = rng.sample(range(len(pool)), len(pool))
    mixed = records + [pool[i] for i in order[:wanted]]
    rng.shuffle(mixed)
    return mixed
