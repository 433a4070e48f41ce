"""``specdistill adapt``: a head fine-tuned on a server's captured traffic, checked on held-back requests and
chat, swapped into that server while it serves; what it refuses, and when."""

import json
import random
import threading
import time
from dataclasses import replace

import openai
import pytest
import torch
from serve_helpers import MODEL, char_chat_tokenizer, running_server
from specdistill.serve import SpeculativeGenerator

from specdistill.adapt import AdaptConfig, decide, reblend, run_adapt, split_held_back
from specdistill.adapt_loop import adapt_every, chat_budget
from specdistill.cli import main
from specdistill.data.captured import read_capture
from specdistill.models import tiny_llama
from specdistill.models.eagle3 import Eagle3Head, save_head
from specdistill.models.eagle3_io import load_head
from specdistill.models.target_states import load_states
from specdistill.training.config import TrainConfig

PROMPTS = ["sort a list", "open a file", "define a class", "zip two lists", "print it", "read a line",
           "count the words", "join the names", "split a string", "find the max", "sum it up", "copy a dict"]


@pytest.fixture(scope="module")
def tokenizer():
    return char_chat_tokenizer()


def _tiny_target(tokenizer):
    """A tiny random target with room for the held-out chat prompts (one token per character) and answers."""
    target = tiny_llama(vocab_size=len(tokenizer), num_layers=3, max_positions=256, seed=2)
    target.generation_config.eos_token_id = 0
    with torch.no_grad():  # a random model says <eos> too often for long answers: make it rarer
        target.lm_head.weight[0] = -target.lm_head.weight[2:].mean(0)
    return target


def _config(tmp_path, start, capture, **overrides) -> AdaptConfig:
    train = TrainConfig(draft_type="eagle3", draft=str(start), data=str(capture), output_dir=str(tmp_path / "adapt"),
                        head_vocab_size=30, ttt_steps=2, seq_len=64, batch_size=2, steps=6, max_minutes=0, lr=3e-3,
                        warmup_steps=1, blend_start=0.3, bf16=False, device="cpu", eval_prompts=2, save_every=10,
                        report_to="none")
    return AdaptConfig(train=train, holdout_share=0.25, **overrides)


def test_adapt_trains_on_the_capture_checks_the_head_and_swaps_it_into_the_server(tmp_path, tokenizer):
    target, start = _tiny_target(tokenizer), tmp_path / "start"
    head = Eagle3Head.for_target(target, torch.arange(2, len(tokenizer)), layer_ids=[0, 1, 2], seed=1)
    save_head(head, start)
    gen = SpeculativeGenerator(target, head, num_draft_tokens=3, tokenizer=tokenizer)
    capture = tmp_path / "capture"
    with running_server(gen, tokenizer, capture=str(capture), capture_features=True) as (url, engine):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        answers = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                                  max_tokens=24, temperature=0).choices[0].message.content
                   for p in PROMPTS]
        _wait_for_records(capture, 12)
        assert all(record["states"] for record in _records(capture))  # each with the target states it was served with
        with pytest.raises(ValueError, match="does not answer /health"):  # before any training
            run_adapt(_config(tmp_path, start, capture, swap_url="http://127.0.0.1:9"), target, tokenizer, False)
        config = _config(tmp_path, start, capture, swap_url=url, min_gain=-10, max_chat_loss=10)
        result = run_adapt(config, target, tokenizer, progress=False)
        assert result["held_back"] + result["trained_on"] == 12 and result["held_back"] >= 1 and result["steps"] == 6
        assert result["swap"] and result["server"]["version"] == 2
        for figures in (result["before"], result["after"]):
            assert set(figures) == {"traffic", "chat"} and 1 <= figures["traffic"]["tau"] <= 5
        assert result["before"] != result["after"]
        assert result["target_states"]["read"] == result["trained_on"]  # the capture's states: none computed
        assert not list((tmp_path / "adapt" / "features").glob("*.safetensors"))
        assert engine.engine.draft_versions[-1].name == str((tmp_path / "adapt" / "final").resolve())
        again = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPTS[0]}],
                                               max_tokens=24, temperature=0).choices[0].message.content
        assert again == answers[0]  # the new head drafts; the output is still the target's


def _records(capture) -> list[dict]:
    return [json.loads(line) for path in sorted(capture.glob("capture-*.jsonl")) for line in path.open()]


def _wait_for_records(capture, count: int) -> None:
    deadline = time.monotonic() + 20
    while (not capture.is_dir() or len(_records(capture)) < count) and time.monotonic() < deadline:
        time.sleep(0.05)  # a thread of the server writes the records
    assert len(_records(capture)) == count


def test_captured_states_are_the_target_own_over_each_record_as_answered(tmp_path, tokenizer):
    target = _tiny_target(tokenizer)
    head = Eagle3Head.for_target(target, torch.arange(2, len(tokenizer)), layer_ids=[0, 1, 2], seed=1)
    gen = SpeculativeGenerator(target, head, num_draft_tokens=3, tokenizer=tokenizer)
    capture = tmp_path / "capture"
    with running_server(gen, tokenizer, capture=str(capture), capture_features=True) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for prompt, stop in [("sort a list", None), ("open a file", ["e", "a"]), ("print it", ["o"])]:
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0, stop=stop)
        _wait_for_records(capture, 3)
    for record in _records(capture):  # cut by a stop string or not, the states line up with its tokens
        tokens = record["prompt_ids"] + record["answer_ids"]
        features, final = load_states([capture / "states"], record["states"], [0, 1, 2], record["target"])
        with torch.no_grad():
            hidden = target(input_ids=torch.tensor([tokens]), output_hidden_states=True).hidden_states
        assert len(features) == len(tokens) - 1
        torch.testing.assert_close(features, torch.cat([hidden[i] for i in (0, 1, 2)], -1)[0, :-1], atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(final, hidden[-1][0, :-1], atol=1e-4, rtol=1e-4)


def test_the_check_keeps_a_head_that_does_not_gain_or_forgets_chat():
    config = AdaptConfig()
    before = {"traffic": {"tau": 1.50}, "chat": {"tau": 2.80}}
    assert decide(before, {"traffic": {"tau": 1.70}, "chat": {"tau": 2.70}}, config)[0]
    swap, reason = decide(before, {"traffic": {"tau": 1.51}, "chat": {"tau": 2.80}}, config)
    assert not swap and "min-gain" in reason
    swap, reason = decide(before, {"traffic": {"tau": 1.90}, "chat": {"tau": 2.60}}, config)
    assert not swap and "--blend-ladder" in reason


def test_a_head_that_forgets_chat_is_reblended_with_more_of_its_start_rung_by_rung(tmp_path, tokenizer):
    target, start = _tiny_target(tokenizer), tmp_path / "start"
    save_head(Eagle3Head.for_target(target, torch.arange(2, len(tokenizer)), layer_ids=[0, 1, 2], seed=1), start)
    capture = tmp_path / "capture"
    capture.mkdir()
    rng = random.Random(0)
    records = [{"status": "finished", "target": "smollm2-135m", "prompt_ids": [1] + rng.choices(range(2, 30), k=9),
                "answer_ids": rng.choices(range(2, 30), k=20)} for _ in range(12)]
    (capture / "capture-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # chat must gain 10: no rung passes, so every one is tried, each blended further from the trained head
    config = _config(tmp_path, start, capture, max_chat_loss=-10, min_gain=-10, blend_ladder="0.5,0.8")
    result = run_adapt(config, target, tokenizer, progress=False)
    assert not result["swap"] and [rung["blend"] for rung in result["tried"]] == [0.3, 0.5, 0.8]
    assert result["blend"] == 0.3 and "re-blended 0.5, 0.8: none passed" in result["reason"]
    out = tmp_path / "adapt"
    trained = load_head(out / "checkpoint", target, torch.float32)  # the head before any blend
    first = load_head(start, target, torch.float32)

    def assert_blended(folder, share):
        final = load_head(folder, target, torch.float32)
        for name in ("fc.weight", "layers.0.mlp.up_proj.weight"):
            expected = (1 - share) * trained.state_dict()[name] + share * first.state_dict()[name]
            torch.testing.assert_close(final.state_dict()[name], expected)
        assert f"| `blend_start` | `{share}` |" in (folder / "README.md").read_text()
    assert_blended(out / "final", 0.3)  # kept back: the head as trained goes back in its folder
    head = load_head(out / "final", target, torch.float32)
    reblend(head, config.train, target, 0.3, 0.8, {"draft_dir": str(out / "rung"), "history": []})
    assert_blended(out / "rung", 0.8)  # a rung is (1 - r) of the trained head and r of the start


def test_the_blend_ladder_rises_above_the_blend_and_stays_below_1():
    assert AdaptConfig().ladder() == [0.5, 0.7] == AdaptConfig(blend_ladder="0.7,0.2,0.5").ladder()
    assert AdaptConfig(train=replace(AdaptConfig().train, blend_start=0.6)).ladder() == [0.7]  # 0.5 is passed
    for ladder in ("0.5,1", "half", "0"):
        with pytest.raises(ValueError, match="--blend-ladder"):
            AdaptConfig(blend_ladder=ladder).ladder()


def test_held_back_requests_are_a_seeded_share_never_trained_on():
    records = [([i], [i + 1]) for i in range(1000)]
    held, kept = split_held_back(records, 0.1, 1000, seed=0)
    assert 70 <= len(held) <= 130 and len(held) + len(kept) == 1000 and not set(map(str, held)) & set(map(str, kept))
    assert split_held_back(records, 0.1, 1000, seed=0) == (held, kept) != split_held_back(records, 0.1, 1000, seed=1)
    assert len(split_held_back(records, 0.5, 7, seed=0)[0]) == 7
    assert len(split_held_back(records[:3], 0.01, 100, seed=0)[0]) == 1  # at least one
    for most in (1000, 20):  # the capture grows (adapt --every), below the cap or at it
        kept = split_held_back(records[:300], 0.1, most, seed=0)[1]
        later = split_held_back(records, 0.1, most, seed=0)[0]
        assert later and not set(map(str, later)) & set(map(str, kept))  # never one trained on before
    answered_again = [(prompt, answer + [7]) for prompt, answer in records]  # the same prompts, other answers
    twice = split_held_back(records + answered_again, 0.1, 1000, seed=0)[0]
    assert sorted(twice) == sorted(held + [(prompt, answer + [7]) for prompt, answer in held])  # one side each


def test_adapt_refuses_what_it_cannot_adapt_on(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert main(["adapt", "--data", str(tmp_path / "notes")]) == 2
    assert "is not a capture folder" in capsys.readouterr().err
    (tmp_path / "few").mkdir()
    record = ('{"status": "finished", "target": "smollm2-135m", "prompt_ids": [1, 2], "answer_ids": [3]}\n')
    (tmp_path / "few" / "capture-0.jsonl").write_text(record * 4)
    assert main(["adapt", "--data", str(tmp_path / "few"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "at least 10" in capsys.readouterr().err
    assert main(["adapt", "--data", str(tmp_path / "few"), "--draft-type", "lm", "--blend-start", "0"]) == 2
    assert "EAGLE-3" in capsys.readouterr().err


def test_adapt_every_runs_a_cycle_per_new_requests_each_from_the_head_the_server_runs(tmp_path, tokenizer):
    target, start = _tiny_target(tokenizer), tmp_path / "start"
    save_head(Eagle3Head.for_target(target, torch.arange(2, len(tokenizer)), layer_ids=[0, 1, 2], seed=1), start)
    gen = SpeculativeGenerator(target, Eagle3Head.for_target(target, torch.arange(2, len(tokenizer)), [0, 1, 2], 1),
                               num_draft_tokens=3, tokenizer=tokenizer)
    capture = tmp_path / "capture"
    with running_server(gen, tokenizer, capture=str(capture)) as (url, engine):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

        def ask(prompts):
            for prompt in prompts:
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=24, temperature=0)
        config = _config(tmp_path, start, capture, swap_url=url, min_gain=-10, max_chat_loss=10, every=10, cycles=2)
        with pytest.raises(ValueError, match="is not a folder"):
            adapt_every(replace(config, train=replace(config.train, data=str(tmp_path / "nowhere"))), 0.05, target)
        ask(PROMPTS)
        while not capture.is_dir() or len(read_capture(str(capture), "smollm2-135m")) < 12:
            time.sleep(0.05)  # a thread of the server writes the records
        done = []
        loop = threading.Thread(target=lambda: done.extend(adapt_every(config, 0.05, target, tokenizer, False)),
                                daemon=True)
        loop.start()  # 12 requests captured: the first cycle
        deadline = time.monotonic() + 120
        while len(engine.engine.draft_versions) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the first cycle swaps its head in
        ask(PROMPTS[:10])  # ten more: the second cycle
        loop.join(timeout=120)
        assert not loop.is_alive()
        assert [r["cycle"] for r in done] == [1, 2] and [r["captured"] for r in done] == [12, 22]
        assert engine.engine.draft_versions[-1].name == str((tmp_path / "adapt" / "cycle-2" / "final").resolve())
    second = json.loads((tmp_path / "adapt" / "cycle-2" / "train_config.json").read_text())
    assert second["draft"] == done[0]["draft"]  # the second cycle fine-tuned the head the first swapped in
    assert not (tmp_path / "adapt" / "cycle-1" / "features").exists()
    assert second["replay"] == ""
    # one chat set for both cycles: the second scores the head the first swapped in along the same answers
    assert done[1]["before"]["chat"] == done[0]["after"]["chat"]
    assert (tmp_path / "adapt" / "eval_answers.jsonl").exists()
    assert not (tmp_path / "adapt" / "cycle-2" / "eval_answers.jsonl").exists()
    with pytest.raises(ValueError, match="earlier loop"):
        adapt_every(config, 0.05, target, tokenizer, False)


def test_chat_losses_of_the_cycles_share_one_budget():
    config = AdaptConfig(max_chat_loss=0.15)
    first = {"before": {"chat": {"tau": 2.8}}, "after": {"chat": {"tau": 2.7}}, "server": {"version": 2}}
    assert chat_budget(config, []) == 0.15
    assert chat_budget(config, [first]) == 0.05  # 0.1 of it spent by the first swap
    kept = {"before": {"chat": {"tau": 2.7}}, "after": {"chat": {"tau": 2.2}}}  # never swapped in: costs nothing
    assert chat_budget(config, [first, kept]) == 0.05
