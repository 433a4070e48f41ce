"""Teacher data: exactly one record or failure per prompt under injected faults, kills
that lose nothing, the local teacher, prompt sets, and training on the records."""

import collections
import json
import signal
import subprocess
import sys
import time

import pytest
from fault_server import FaultServer

from specdistill.data.builtin_prompts import builtin_prompt_set, prompt_texts
from specdistill.data.jsonl import read_rows
from specdistill.data.prompts import HELDOUT_PROMPTS
from specdistill.models import tiny_llama
from specdistill.teacher.generate import run_generate_data
from specdistill.teacher.generate_config import GenerateConfig, load_prompts
from specdistill.teacher.make_prompts import MakePromptsConfig, run_make_prompts
from specdistill.training import trainer as train_module
from specdistill.training.config import TrainConfig
from specdistill.training.trainer import train

FAULTS = ["plain one", "[429] rate limited", "[500] flaky", "[drop] cut off", "[slow] too slow", "[fail] broken",
          "[empty] nothing", "[length] cut", "[dup] first", "[dup] second", "[think] reasoned"]


def _prompt_file(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def _outcomes(out):
    kept = read_rows(out)
    dropped = read_rows(out.with_suffix(".dropped.jsonl"))
    failed = read_rows(out.with_suffix(".failures.jsonl"))
    return kept, dropped, failed


def test_every_prompt_ends_with_one_record_or_one_failure(tmp_path):
    out = tmp_path / "out.jsonl"
    with FaultServer(slow_seconds=1.0) as server:
        config = GenerateConfig(prompts=_prompt_file(tmp_path / "p.jsonl", FAULTS), out=str(out),
                                endpoint=server.url, model="teacher", timeout=0.4, max_retries=2, concurrency=4)
        summary = run_generate_data(config, progress=False)
        kept, dropped, failed = _outcomes(out)
        text = {row["id"]: row["messages"][-1]["content"] for row in kept + dropped + failed}
        assert sorted(text.values()) == sorted(FAULTS)
        assert collections.Counter(row["id"] for row in kept + dropped + failed) == {i: 1 for i in text}
        assert {text[row["id"]] for row in failed} == {"[slow] too slow", "[fail] broken"}
        assert server.attempts["[fail] broken"] == 3  # the client's retries, then a recorded failure
        assert {row["dropped"] for row in dropped} == {"empty", "truncated", "duplicate"}
        by_text = {text[row["id"]]: row for row in kept}
        assert by_text["[think] reasoned"]["reasoning"] == "thinking about it"
        assert by_text["[429] rate limited"]["response"] == "answer to [429] rate limited"
        assert by_text["plain one"]["usage"] == {"prompt_tokens": 5, "completion_tokens": 7}
        assert by_text["plain one"]["teacher"] == "teacher" and by_text["plain one"]["finish_reason"] == "stop"
        assert summary["records"] == len(kept) == 6 and summary["failures"] == 2 and summary["retries"] >= 5
        # A rerun leaves the answered prompts alone and tries the failures again.
        again = run_generate_data(config, progress=False)
        assert again["answered_before"] == 9 and again["requests"] == 2 and again["failures"] == 2
        assert server.attempts["[fail] broken"] == 6 and server.attempts["plain one"] == 1
        assert len(read_rows(out)) == 6


def test_a_killed_run_restarted_answers_each_prompt_exactly_once(tmp_path):
    prompts = [f"question {i}" for i in range(40)]
    out = tmp_path / "out.jsonl"
    with FaultServer(delay=0.05) as server:
        command = [sys.executable, "-m", "specdistill.cli", "generate-data", "--prompts",
                   _prompt_file(tmp_path / "p.jsonl", prompts), "--out", str(out), "--endpoint", server.url,
                   "--model", "t", "--concurrency", "2", "--n", "2"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (not out.exists() or out.read_text().count("\n") < 8) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        partial = len(read_rows(out))
        assert 8 <= partial < 80
        run_generate_data(GenerateConfig(prompts=str(tmp_path / "p.jsonl"), out=str(out), endpoint=server.url,
                                         model="t", n=2), progress=False)
    lines = out.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole
    assert collections.Counter((r["messages"][-1]["content"], r["sample"]) for r in rows) == {
        (p, s): 1 for p in prompts for s in (0, 1)}


@pytest.fixture()
def tiny_teacher(tmp_path, char_tokenizer):
    folder = tmp_path / "teacher"
    tiny_llama(vocab_size=len(char_tokenizer), num_layers=3, hidden_size=32, seed=2).save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    return folder


def test_the_local_teacher_writes_the_same_records_and_they_train_a_draft(tmp_path, tiny_teacher, monkeypatch,
                                                                          char_tokenizer):
    prompts = _prompt_file(tmp_path / "p.jsonl", [f"def f{i}(x): return x" for i in range(6)])
    outs = []
    for batch_size in (1, 4):
        out = tmp_path / f"local{batch_size}.jsonl"
        config = GenerateConfig(prompts=prompts, out=str(out), teacher=str(tiny_teacher), n=2, max_tokens=12,
                                temperature=1.0, batch_size=batch_size, keep_truncated=True)
        summary = run_generate_data(config, progress=False)
        assert summary["records"] + summary["dropped_duplicate"] + summary["dropped_empty"] == 12
        outs.append({(r["id"], r["sample"]): r["answer_ids"] for r in read_rows(out)})
    assert outs[0] == outs[1]  # a row's seed comes from its prompt, not its batch
    assert run_generate_data(config, progress=False)["requests"] == 0
    record = read_rows(tmp_path / "local4.jsonl")[0]
    assert record["prompt_ids"] and record["usage"]["completion_tokens"] > 0 and record["teacher"]
    # Black-box SFT from a given draft: cross entropy on the responses, no target loaded.
    draft_dir = tmp_path / "draft"
    tiny_llama(vocab_size=len(char_tokenizer), num_layers=1, hidden_size=32).save_pretrained(draft_dir)
    char_tokenizer.save_pretrained(draft_dir)

    def no_target(*args, **kwargs):
        raise AssertionError("the target was loaded")

    monkeypatch.setattr(train_module, "load_target", no_target)
    base = dict(target=str(tiny_teacher), data=str(tmp_path / "local4.jsonl"), seq_len=48, batch_size=2, steps=12,
                lr=1e-2, warmup_steps=1, bf16=False, report_to="none")
    sft = train(TrainConfig(**base, draft=str(draft_dir), alpha=0.0, output_dir=str(tmp_path / "sft")),
                progress=False)
    history = sft["history"]
    assert history[-1]["loss"] < history[0]["loss"] and 0 <= history[-1]["acceptance"] <= 1
    monkeypatch.undo()
    # SFT of a draft pruned from the target (loaded for that only); and white-box on black-box
    # text: the KL term to the target on the same tokens.
    for alpha in (0.0, 0.5):
        run = train(TrainConfig(**base, keep_layers="0,-1", alpha=alpha, output_dir=str(tmp_path / f"a{alpha}")),
                    progress=False)
        # A random teacher's T = 1 text is near noise: the loss falls slowly and each step's is noisy,
        # so the last 4 steps are compared with the first 4.
        losses = [entry["loss"] for entry in run["history"]]
        assert run["steps"] == 12 and sum(losses[-4:]) < sum(losses[:4])


def test_prompt_sets_presets_and_made_prompts(tmp_path):
    assert not set(builtin_prompt_set("builtin")) & set(HELDOUT_PROMPTS)
    code = builtin_prompt_set("builtin:code")
    assert len(set(code)) == len(code) == 2200 and not set(code) & set(HELDOUT_PROMPTS)
    written = builtin_prompt_set("builtin:written")
    assert len(set(written)) == len(written) >= 200 and not set(written) & set(HELDOUT_PROMPTS)
    (tmp_path / "mine.txt").write_text("What is a closure?\n")
    mixed = prompt_texts(f"builtin:python, {tmp_path / 'mine.txt'}")
    assert mixed[-1] == "What is a closure?" and mixed[:-1] == builtin_prompt_set("builtin:python")
    assert len(builtin_prompt_set("builtin:stdlib")) >= 300
    with pytest.raises(ValueError, match="unknown prompt set"):
        builtin_prompt_set("builtin:nope")
    prompts = load_prompts(GenerateConfig(prompts="builtin:python", system_preset="explain"))
    assert prompts[0]["messages"][0]["role"] == "system" and len({p["id"] for p in prompts}) == len(prompts)
    source = tmp_path / "src"
    source.mkdir()
    (source / "tool.py").write_text('def scale(x, factor=2):\n    """Multiply x by factor."""\n    y = x * factor\n'
                                    '    return y\n\n\ndef _hidden():\n    """Not public."""\n')
    (source / "guide.md").write_text("# Guide\n\n" + " ".join(["Lists keep their order and may change."] * 8)
                                     + "\n\nshort line\n")
    summary = run_make_prompts(MakePromptsConfig(source=str(source), out=str(tmp_path / "made.jsonl")),
                               progress=False)
    made = read_rows(tmp_path / "made.jsonl")
    assert summary["prompts"] == len(made) == 3 and summary["from_prose"] == 1
    texts = " ".join(row["prompt"] for row in made)
    assert "Write a Python function `scale(x, factor=2)`: Multiply x by factor." in texts
    assert "def scale" in texts and "_hidden" not in texts and "Lists keep their order" in texts


def test_target_written_prompts_are_clean_new_requests(tiny_teacher, monkeypatch):
    from specdistill.teacher import self_written_prompts as self_prompts

    text = self_prompts.few_shot_text(["How do I sort a list?", "Explain closures."])
    assert text.endswith("1. How do I sort a list?\n2. Explain closures.\n3.")
    assert self_prompts.clean_request(" How do I read a file in Python?\n4. more", True) == \
        "How do I read a file in Python?"
    assert self_prompts.clean_request(" How do I read a file in", False) is None  # cut off at max tokens
    assert self_prompts.clean_request(" Sort it.", True) is None  # too short to be a request
    assert self_prompts.clean_request(" Write a function that adds two numbers", True) is None  # no ending
    # The tiny random teacher rarely writes a clean line: the attempts are capped at 4x the count.
    lists = []
    monkeypatch.setattr(self_prompts, "SHOTS", 2)
    monkeypatch.setattr(self_prompts, "few_shot_text", lambda examples: lists.append(examples) or text)
    written = self_prompts.target_written_prompts(3, seed=0, model=str(tiny_teacher), batch_size=4, progress=False)
    assert len(written) <= 3 and all(self_prompts.clean_request(row["prompt"], True) for row in written)
    assert len({row["prompt"] for row in written}) == len(written)
    assert not {row["prompt"] for row in written} & (set(HELDOUT_PROMPTS) | set(builtin_prompt_set("builtin")))
    assert len(lists) == 12 or len(written) == 3  # at most 4 x 3 attempts, in batches of 4
    assert all(len(examples) == 2 and not set(examples) & set(HELDOUT_PROMPTS) for examples in lists)
    # With a cleaner that keeps any line the random teacher writes, the prompts must come out: written by
    # the model (its decoded text), distinct, and named after it.
    lines = []
    keep_any_line = lambda text, finished: lines.append(text) or text.strip() or None  # noqa: E731
    monkeypatch.setattr(self_prompts, "clean_request", keep_any_line)
    written = self_prompts.target_written_prompts(3, seed=0, model=str(tiny_teacher), batch_size=4, progress=False)
    assert len(written) == 3 and len({row["prompt"] for row in written}) == 3
    assert all(row["prompt"] in {line.strip() for line in lines} for row in written)
    assert all(row["source"] == f"target:{tiny_teacher}" for row in written)


def test_a_multi_turn_prompt_asks_its_next_turn_after_the_teachers_own_answer(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"turns": ["plain first", "plain second", "plain third"]}) + "\n"
                       + json.dumps({"prompt": "plain single"}) + "\n"
                       + json.dumps({"turns": ["[fail] broken", "never asked"]}) + "\n")
    out = tmp_path / "out.jsonl"
    with FaultServer() as server:
        config = GenerateConfig(prompts=str(prompts), out=str(out), endpoint=server.url, model="teacher",
                                max_retries=0)
        summary = run_generate_data(config, progress=False)
        kept, _, failed = _outcomes(out)
        assert summary["records"] == 4 and summary["failures"] == 1 and len(failed) == 1
        third = max(kept, key=lambda row: len(row["messages"]))
        assert [m["content"] for m in third["messages"]] == [
            "plain first", "answer to plain first", "plain second", "answer to plain second", "plain third"]
        assert [m["role"] for m in third["messages"]] == ["user", "assistant", "user", "assistant", "user"]
        ids = sorted(row["id"] for row in kept)
        assert len(set(ids)) == 4 and third["id"].endswith("-t3") and third["id"][:-3] + "-t2" in ids
        assert "never asked" not in json.dumps(kept + failed)  # a failed turn ends its conversation
        # A rerun has nothing left to ask.
        again = run_generate_data(config, progress=False)
        assert again["records"] == 0 and again["answered_before"] == 4


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_continuous_batching_gives_each_prompt_the_answer_it_gets_alone(char_tokenizer, temperature):
    from specdistill.serve import SpeculativeGenerator

    from specdistill.teacher.local import answer_batch

    model = tiny_llama(vocab_size=len(char_tokenizer), num_layers=3, hidden_size=32, seed=2)
    generator = SpeculativeGenerator(model, None, tokenizer=char_tokenizer)
    prompts = [{"id": f"p{i}", "messages": [{"role": "user", "content": "def f(x):"[: 3 + i]}]} for i in range(5)]
    together = answer_batch(generator, char_tokenizer, prompts, 2, 9, temperature, 1.0, 7, max_batch_size=3)
    for prompt, (choices, _) in zip(prompts, together):
        alone, _ = answer_batch(generator, char_tokenizer, [prompt], 2, 9, temperature, 1.0, 7)[0]
        assert [c["answer_ids"] for c in choices] == [c["answer_ids"] for c in alone]
