"""Learning from served traffic: the draft swapped between steps (engine and ``POST /admin/draft``)
without dropping a request or changing an output, and requests captured to JSON lines
(``--capture``) that ``specdistill train --data DIR`` reads back."""

import asyncio
import copy
import json

import httpx
import openai
import pytest
import torch
from serve_helpers import (
    MODEL,
    char_chat_tokenizer,
    hf_greedy,
    running_server,
    sharp_tiny_target,
    slowed,
    tiny_generator,
    tiny_head,
)
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.capture import TrafficCapture

from specdistill.data.captured import read_capture
from specdistill.models import prune_draft
from specdistill.models.eagle3 import save_head
from specdistill.training.config import TrainConfig
from specdistill.training.trainer import train


@pytest.fixture(scope="module")
def tokenizer():
    return char_chat_tokenizer()


def _greedy_through_a_swap(gen, new_draft, prompts, n, steps_before=3):
    """Greedy rows decoded with ``gen``'s draft for a few steps, then with ``new_draft``."""
    engine = gen.engine(4)
    requests = [engine.add(p, n, eos_token_id=[]) for p in prompts]
    for _ in range(steps_before):
        engine.step()
    assert all(not r.finished for r in requests)
    version = engine.swap_draft(new_draft, "new") if new_draft is not None else None
    while engine.has_work():
        engine.step()
    return engine, requests, version


def test_a_head_swapped_mid_generation_keeps_every_row_exact():
    target = sharp_tiny_target()
    gen = SpeculativeGenerator(target, tiny_head(target), num_draft_tokens=3, draft_tree="3,2,4")
    new_head = tiny_head(target)
    with torch.no_grad():
        new_head.fc.weight.mul_(0.5)  # another head: its drafts differ
    prompts = [torch.tensor([[3, 5, 7, 2]]), torch.tensor([[9, 4]]), torch.tensor([[6, 6, 1, 12, 4]])]
    engine, requests, version = _greedy_through_a_swap(gen, new_head, prompts, 24)
    for prompt, request in zip(prompts, requests):
        assert request.tokens == hf_greedy(target, prompt, 24)[0].tolist()
    assert gen.draft is new_head
    assert version.version == 2 and [v.name for v in engine.draft_versions] == ["Eagle3Head", "new"]
    after = version.counts(engine.stats.counts())
    before = engine.draft_versions[0].counts(engine.stats.counts())
    assert after["draft_tokens"] > 0 and before["draft_tokens"] > 0  # both versions drafted, counted apart
    assert before["draft_tokens"] + after["draft_tokens"] == engine.stats.proposed
    # The new head's cache, prefilled at the swap, is what the head would have built itself: the same
    # head swapped in accepts exactly what it accepts with no swap.
    same = tiny_head(target)
    runs = []
    for swap in (False, True):
        gen = SpeculativeGenerator(target, same, num_draft_tokens=3, draft_tree="3,2,4")
        engine, requests, _ = _greedy_through_a_swap(gen, copy.deepcopy(same), prompts, 24) if swap else \
            _greedy_through_a_swap(gen, None, prompts, 24)
        runs.append(([r.tokens for r in requests], [r.stats.accepted for r in requests]))
    assert runs[0] == runs[1]


def test_an_lm_draft_swapped_mid_generation_and_a_wrong_one_refused(tokenizer):
    gen = tiny_generator(tokenizer)
    target = gen.target
    prompts = [torch.tensor([tokenizer("sort a list")["input_ids"]]), torch.tensor([tokenizer("zip")["input_ids"]])]
    _, requests, _ = _greedy_through_a_swap(gen, prune_draft(target, [0, 1, -1]), prompts, 20)
    for prompt, request in zip(prompts, requests):
        assert request.tokens == hf_greedy(target, prompt, 20)[0].tolist()
    engine = gen.engine(2)
    engine.add(prompts[0], 20, eos_token_id=[])
    engine.step()
    serving = gen.draft
    with pytest.raises(ValueError, match="same kind"):
        engine.swap_draft(tiny_head(sharp_tiny_target()), "a head")
    with pytest.raises(ValueError, match="vocabulary mismatch"):  # another target's draft
        engine.swap_draft(prune_draft(sharp_tiny_target(), [0]), "another target's")
    assert gen.draft is serving and len(engine.draft_versions) == 1
    while engine.has_work():
        engine.step()
    assert engine.running == [] and engine.stats.new_tokens == 20


def _swap(url, draft, **headers):
    return httpx.post(url + "/admin/draft", json={"draft": draft}, headers=headers, timeout=60)


def test_the_draft_is_swapped_over_http_while_requests_stream(tmp_path, tokenizer, monkeypatch):
    gen = tiny_generator(tokenizer)
    saved = tmp_path / "new-draft"
    prune_draft(gen.target, [0, 1, -1]).save_pretrained(saved)
    prompts = ["what is a set", "sort a list", "open a file", "define a class"]
    alone = [gen.generate(torch.tensor([tokenizer(p)["input_ids"]]), 40).text for p in prompts]

    async def stream_all(url):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

        async def one(prompt):
            chunks = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0,
                                                     stream=True)
            return "".join([c.choices[0].text async for c in chunks])
        tasks = [asyncio.create_task(one(p)) for p in prompts]
        # All four rows admitted and decoding (a slow machine admits the last one after the first tokens).
        deadline = asyncio.get_running_loop().time() + 60
        while engine.num_running < len(prompts) or engine.engine.stats.new_tokens < 8:
            assert asyncio.get_running_loop().time() < deadline, "the four requests never ran together"
            await asyncio.sleep(0.01)
        running = engine.num_running
        swapped = await asyncio.to_thread(_swap, url, str(saved))
        assert running == len(prompts)
        return swapped, await asyncio.gather(*tasks)

    slowed(gen, monkeypatch)
    with running_server(gen, tokenizer) as (url, engine):
        swapped, texts = asyncio.run(stream_all(url))
        assert swapped.status_code == 200, swapped.text
        assert swapped.json()["version"] == 2 and swapped.json()["previous"]["version"] == 1
        assert texts == alone  # nothing dropped, nothing changed
        for bad in (str(tmp_path / "missing"), "ngram"):
            refused = _swap(url, bad)
            assert refused.status_code == 400 and "serves on" in refused.json()["error"]["message"]
        assert httpx.post(url + "/admin/draft", json={"drafts": "x"}).status_code == 400
        metrics = httpx.get(url + "/metrics").text
        assert f'draft="{saved}",draft_version="2"' in metrics and "draft_info" in metrics
        by_draft = [line for line in metrics.splitlines() if line.startswith("specdistill:spec_decode_num_draft_tok")
                    and "by_draft_total{" in line]
        assert len(by_draft) == 2
        out = openai.OpenAI(base_url=url + "/v1", api_key="unused").completions.create(
            model=MODEL, prompt=prompts[0], max_tokens=40, temperature=0)
        assert out.choices[0].text == alone[0]  # still serving, with the new draft


def test_admin_is_guarded_by_the_api_key_and_the_allowed_networks(tokenizer):
    gen = tiny_generator(tokenizer)
    with running_server(gen, tokenizer, api_key="secret") as (url, _):
        assert _swap(url, "default").status_code == 401
    with running_server(gen, tokenizer, admin_from="10.0.0.0/8") as (url, _):
        refused = _swap(url, "default")
        assert refused.status_code == 403 and "--admin-from" in refused.json()["error"]["message"]
    with pytest.raises(ValueError, match="admin_from"):
        running_server(gen, tokenizer, admin_from="nowhere").__enter__()


def _records(directory):
    return [json.loads(line) for path in sorted(directory.glob("capture-*.jsonl")) for line in path.open()]


def test_captured_requests_are_records_the_trainer_reads(tmp_path, tokenizer, monkeypatch):
    gen = tiny_generator(tokenizer)
    capture = tmp_path / "capture"
    with running_server(gen, tokenizer, capture=str(capture)) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "sort a list"}],
                                              max_tokens=12, temperature=0)
        client.completions.create(model=MODEL, prompt=["zip two lists", "print it"], max_tokens=10, n=2,
                                  temperature=0.9, seed=4)
        slowed(gen, monkeypatch)
        body = {"model": MODEL, "prompt": "define a class", "max_tokens": 64, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body) as response:
            next(response.iter_lines())  # the client goes away after the first event
        metrics = httpx.get(url + "/metrics").text
        assert 'specdistill:capture_states_skipped_total{model_name="tiny"} 0.0' in metrics
        assert "specdistill:capture_pending_states_bytes{" in metrics
    records = _records(capture)  # the writer is drained when the server stops
    assert len(records) == 1 + 4 + 1
    first = records[0]
    assert first["route"] == "/v1/chat/completions" and first["messages"] == [{"role": "user",
                                                                                "content": "sort a list"}]
    assert tokenizer.decode(first["answer_ids"]) == chat.choices[0].message.content
    assert first["status"] == "finished" and first["target"] == "smollm2-135m" and first["draft_version"] == 1
    assert first["drafted"] >= first["accepted"] >= 0 and first["sampling"]["temperature"] == 0
    batch = records[1:5]
    assert [r["prompt"] for r in batch] == ["zip two lists", "zip two lists", "print it", "print it"]
    assert [r["prompt_ids"] for r in batch][2] == tokenizer("print it")["input_ids"]
    assert records[5]["status"] == "cancelled" and len(records[5]["answer_ids"]) < 64
    dataset = read_capture(str(capture), "smollm2-135m")
    assert len(dataset) == 5 and dataset[0]["answer_ids"] == first["answer_ids"]
    with pytest.raises(ValueError, match="answered by the target"):
        read_capture(str(capture), str(tmp_path))
    (capture / "capture-z-0001.jsonl").write_text("\n" + json.dumps(first) + "\n" + '{"request_id": "cut sh')
    assert len(read_capture(str(capture), "smollm2-135m")) == 6  # a blank line and a last line cut short skipped
    config = TrainConfig(data=str(capture), output_dir=str(tmp_path / "run"), seq_len=48, batch_size=2, steps=2,
                         keep_layers="0", bf16=False, device="cpu")
    result = train(config, target=gen.target, tokenizer=tokenizer, progress=False)
    assert result["steps"] == 2 and all(h["loss"] > 0 for h in result["history"])


def test_capture_samples_and_rotates_off_the_caller(tmp_path):
    capture = TrafficCapture(tmp_path, sample=0.25, max_bytes=2000, seed=0)
    kept = sum(capture.wants() for _ in range(2000))
    assert 400 < kept < 600
    for i in range(100):
        capture.add({"i": i, "pad": "x" * 50})
    capture.close()
    files = sorted(tmp_path.glob("capture-*.jsonl"))
    assert len(files) > 2 and all(f.stat().st_size <= 2000 for f in files)
    assert [r["i"] for r in _records(tmp_path)] == list(range(100))
    with pytest.raises(ValueError, match="sample"):
        TrafficCapture(tmp_path, sample=0)


def test_states_behind_the_writer_are_bounded_and_their_records_kept(tmp_path):
    """Past ``max_pending_states`` bytes waiting, a record is queued without its states (adapt computes them)."""
    import threading

    from specdistill.models.target_states import load_states

    hidden, layers = 8, [0, 1]
    piece = torch.randn(6, (len(layers) + 1) * hidden)  # 6 positions: a prompt of 4, an answer of 3
    capture = TrafficCapture(tmp_path, max_pending_states=2 * piece.numel() * 4)
    release, write_states = threading.Event(), capture._write_states

    def slow_disk(*args):
        release.wait(10)
        return write_states(*args)
    capture._write_states = slow_disk
    for i in range(3):
        record = {"i": i, "status": "finished", "target": "tiny", "prompt_ids": [1, 2, 3, i], "answer_ids": [5, 6, 7]}
        capture.add(record, ([piece.clone()], layers, hidden))
    assert capture.states_skipped == 1 and capture.pending_states == 2 * piece.numel() * 4
    release.set()
    capture.close()
    records = _records(tmp_path)
    assert [r["i"] for r in records] == [0, 1, 2] and capture.pending_states == 0
    assert [("states" in r) for r in records] == [True, True, False]
    features, final = load_states([tmp_path / "states"], records[1]["states"], layers, "tiny")
    torch.testing.assert_close(final, piece[:, -hidden:])


def test_states_that_fail_or_would_not_train_leave_the_budget_free(tmp_path):
    hidden, piece = 8, torch.randn(6, 16)
    capture = TrafficCapture(tmp_path / "a", max_pending_states=piece.numel() * 4)
    capture._write_states = lambda *args: 1 / 0  # a broken disk: the record is kept, its bytes released
    capture.add({"i": 0, "status": "finished"}, ([piece], [0], hidden))
    capture.close()
    assert capture.pending_states == 0 and "states" not in _records(tmp_path / "a")[0]
    capture = TrafficCapture(tmp_path / "b", max_pending_states=piece.numel() * 4)
    capture.add({"i": 0, "status": "cancelled"}, ([piece], [0], hidden))  # never trains: no bytes held for it
    assert capture.pending_states == 0 and capture.states_skipped == 0
    capture.close()


def test_a_saved_head_swaps_in_by_its_folder(tmp_path):
    from specdistill.serve.async_engine import AsyncEngine

    target = sharp_tiny_target()
    gen = SpeculativeGenerator(target, tiny_head(target), num_draft_tokens=3)
    engine = AsyncEngine(gen.engine(2))
    save_head(tiny_head(target), tmp_path / "head")
    from specdistill.models.drafts import load_draft

    head, _ = load_draft(str(tmp_path / "head"), target, target.dtype)
    engine.start()
    try:
        version = engine.swap_draft(head, str(tmp_path / "head")).result(timeout=30)
    finally:
        engine.close()
    assert version.version == 2 and gen.draft is head
