"""Local datasets (JSON lines, Parquet, saved datasets) as training data: chats train on
the answer only, text on everything, bad files fail before any model loads."""

import gzip
import json

import datasets
import pytest

from specdistill.data.batches import pack_records
from specdistill.data.dataset_records import dataset_records, dataset_texts, read_dataset
from specdistill.models import tiny_llama
from specdistill.training.config import TrainConfig
from specdistill.training.trainer import train

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture()
def chat_tokenizer(char_tokenizer):
    char_tokenizer.chat_template = TEMPLATE
    yield char_tokenizer
    char_tokenizer.chat_template = None


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_a_chat_trains_on_its_last_assistant_turn_only(tmp_path, chat_tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sort a list"},
                {"role": "assistant", "content": "use sorted"}]
    dataset, kind = read_dataset(_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}]))
    assert kind == "chat"
    ((prompt, answer),) = dataset_records(dataset, kind, chat_tokenizer)
    rendered = chat_tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
    assert prompt == chat_tokenizer(rendered)["input_ids"]
    assert answer == chat_tokenizer("use sorted")["input_ids"] + [chat_tokenizer.eos_token_id]
    rows = pack_records([(prompt, answer)], seq_len=64, pad_id=0)
    counted = rows.input_ids[0, 1:][rows.loss_mask[0, :-1]].tolist()
    assert counted == answer  # exactly the answer tokens (and the EOS) are predicted with loss


def test_pairs_ids_and_text_datasets(tmp_path, chat_tokenizer):
    pairs, kind = read_dataset(_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "what is a set", "response": "a bag"},
                                                                 {"prompt": "and a list", "response": ""}]))
    assert kind == "pairs" and len(dataset_records(pairs, kind, chat_tokenizer)) == 1  # the empty answer is dropped
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"prompt_ids": [[3, 4]], "answer_ids": [[5, 6, 7]]}).save_to_disk(str(saved))
    ids, kind = read_dataset(str(saved))
    assert kind == "ids" and dataset_records(ids, kind, chat_tokenizer) == [([3, 4], [5, 6, 7])]
    packed = tmp_path / "ids.jsonl.gz"  # gzipped JSON lines read as they are
    packed.write_bytes(gzip.compress(b'{"prompt_ids": [3, 4], "answer_ids": [5, 6, 7]}\n'))
    ids, kind = read_dataset(str(packed))
    assert kind == "ids" and dataset_records(ids, kind, chat_tokenizer) == [([3, 4], [5, 6, 7])]
    parquet = tmp_path / "text.parquet"
    datasets.Dataset.from_dict({"body": ["def f():\n", "  ", "return x\n"]}).to_parquet(str(parquet))
    text, kind = read_dataset(str(parquet), text_field="body")
    assert kind == "text" and dataset_texts(text, "body") == ["def f():\n", "return x\n"]


def test_bad_data_is_a_clear_error_before_any_model_loads(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("this is { not json\n")
    shapeless = _jsonl(tmp_path / "shapeless.jsonl", [{"question": "x", "reply": "y"}])
    for data, error, match in [(str(tmp_path / "missing.jsonl"), FileNotFoundError, "does not exist"),
                               (str(empty), ValueError, "empty|cannot read"),
                               (str(garbage), ValueError, "cannot read"),
                               (shapeless, ValueError, "question.*needs 'messages'")]:
        # The target does not exist either: the data error must come first.
        config = TrainConfig(target=str(tmp_path / "no-model"), data=data, output_dir=str(tmp_path / "run"))
        with pytest.raises(error, match=match):
            train(config, progress=False)


def test_training_on_a_chat_jsonl_end_to_end(tmp_path, chat_tokenizer):
    rows = [{"messages": [{"role": "user", "content": f"task {c}"}, {"role": "assistant", "content": f"do {c} now"}]}
            for c in "abcdefgh"]
    target = tiny_llama(vocab_size=len(chat_tokenizer), num_layers=2)
    config = TrainConfig(data=_jsonl(tmp_path / "chat.jsonl", rows), output_dir=str(tmp_path / "run"), seq_len=48,
                         batch_size=2, steps=3, keep_layers="0", bf16=False, device="cpu")
    result = train(config, target=target, tokenizer=chat_tokenizer, progress=False)
    assert result["steps"] == 3 and all(h["loss"] > 0 for h in result["history"])


def test_replay_mixes_its_share_of_records_and_refuses_plain_text(tmp_path, chat_tokenizer):
    from specdistill.training.sources import DataConfig, with_replay

    replay = _jsonl(tmp_path / "replay.jsonl", [{"prompt_ids": [1, 2], "answer_ids": [9, i]} for i in range(100)])
    records = [([3, 4], [5, i]) for i in range(10)]
    mixed = with_replay(records, DataConfig(data="unused.jsonl", replay=replay, replay_share=0.5), chat_tokenizer)
    assert len(mixed) == 20 and sorted(r for r in mixed if r[1][0] == 5) == sorted(records)
    assert mixed != records + mixed[10:]  # shuffled, so packed rows hold both
    more = with_replay(records * 3, DataConfig(data="unused.jsonl", replay=replay, replay_share=0.5), chat_tokenizer)
    replayed = {tuple(r[1]) for r in more if r[1][0] == 9}
    assert len(replayed) == 30 and {tuple(r[1]) for r in mixed if r[1][0] == 9} < replayed  # a superset of 10's
    text = _jsonl(tmp_path / "text.jsonl", [{"text": "plain words"}])
    with pytest.raises(ValueError, match="plain text"):
        with_replay(records, DataConfig(data="unused.jsonl", replay=text), chat_tokenizer)
    with pytest.raises(ValueError, match="replay_share"):
        DataConfig(replay=replay, replay_share=1.0)
