"""Training data from local datasets (through Hugging Face ``datasets``): JSON lines,
Parquet, or a folder written by ``save_to_disk``. What a record holds decides how
it trains:

    messages                  a chat (list of {role, content}); the last assistant turn is the
                              answer, everything before it the prompt (tokenizer's chat template)
    prompt + response         a single-turn request and its answer (black-box teacher records;
                              ``messages`` + ``response`` works too)
    prompt_ids + answer_ids   token ids, as ``--data target`` stores the target's answers
    text (``--text-field``)   plain text: every token counts, short records packed together

Answers are the only tokens that count. A file that is empty, unreadable or shaped
otherwise is a clear error, raised before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path

from specdistill.data.prompts import chat_ids

DATASET_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _builder(path: Path) -> str | None:
    """The datasets builder of a file by its suffix; gzipped files (x.jsonl.gz) read as they are."""
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else [path.suffix]
    return DATASET_SUFFIXES.get(suffixes[0]) if suffixes else None


def is_dataset(spec: str) -> bool:
    path = Path(spec).expanduser()
    return _builder(path) is not None or (path.is_dir() and (path / "dataset_info.json").exists())


def read_dataset(spec: str, text_field: str = "text"):
    """The dataset and its kind ("chat", "pairs", "ids" or "text"); no model needed."""
    import datasets

    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data {spec!r} does not exist")
    try:
        if path.is_dir():
            dataset = datasets.load_from_disk(str(path))
        else:
            dataset = datasets.load_dataset(_builder(path), data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types for one cause: the file is not what it claims
        raise ValueError(f"cannot read {spec} as a dataset: {err}") from err
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    if len(dataset) == 0:
        raise ValueError(f"the dataset {spec} is empty")
    return dataset, _kind(dataset.column_names, text_field, spec)


def _kind(columns: list[str], text_field: str, spec: str) -> str:
    if "prompt_ids" in columns and "answer_ids" in columns:
        return "ids"
    if "response" in columns and ("prompt" in columns or "messages" in columns):
        return "pairs"
    if "messages" in columns:
        return "chat"
    if text_field in columns:
        return "text"
    raise ValueError(f"{spec} has columns {columns}; training needs 'messages' (a chat), 'prompt' + 'response', "
                     f"'prompt_ids' + 'answer_ids', or a text column ('{text_field}', set with --text-field)")


def dataset_records(dataset, kind: str, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) for every record of a chat, pairs or ids dataset."""
    if kind == "ids":
        return [(list(row["prompt_ids"]), list(row["answer_ids"])) for row in dataset]
    records = []
    for row in dataset:
        if kind == "chat":
            messages = row["messages"]
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError(f"a chat record must end with an assistant message (the answer), got {messages!r}")
            prompt_messages, answer = messages[:-1], messages[-1]["content"]
        else:
            prompt_messages = row["messages"] if "messages" in row and row["messages"] else [
                {"role": "user", "content": row["prompt"]}]
            answer = row["response"]
        if not isinstance(answer, str) or not answer:
            continue  # an empty answer teaches nothing
        prompt = chat_ids(tokenizer, prompt_messages)
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        # A response cut at max_tokens did not end there: the draft must not learn to stop.
        cut = row.get("finish_reason") == "length"
        records.append((prompt, answer_ids + ([] if cut else _end_of_turn(tokenizer))))
    if not records:
        raise ValueError("no record of the dataset has a non-empty answer")
    return records


def dataset_texts(dataset, text_field: str) -> list[str]:
    return [text for text in dataset[text_field] if isinstance(text, str) and text.strip()]


def _end_of_turn(tokenizer) -> list[int]:
    """The draft must learn to end the answer where the target would: EOS after it."""
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
