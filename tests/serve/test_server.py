"""The HTTP server on 127.0.0.1, spoken to with the official ``openai`` client (and raw
httpx for what a client library would refuse to send). Tiny models, a real tokenizer."""

import asyncio
import json
import socket
import threading
import time

import httpx
import openai
import pytest
import torch
from serve_helpers import CONTEXT, MODEL, char_chat_tokenizer, running_server, slowed, tiny_generator

WORDS = ["what is a set", "sort a list", "open a file", "define a class", "read lines", "zip two lists",
         "a dict of sets", "print it", "map and filter", "sum of squares", "use a queue", "raise an error"]


@pytest.fixture(scope="module")
def tokenizer():
    return char_chat_tokenizer()


@pytest.fixture(scope="module")
def generator(tokenizer):
    return tiny_generator(tokenizer)


@pytest.fixture(scope="module")
def server(generator, tokenizer):
    with running_server(generator, tokenizer) as (url, engine):
        yield url, engine


def _client(url, **kwargs):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, **kwargs)


def _alone(generator, tokenizer, prompt, max_tokens, **params):
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    return generator.generate(ids, max_new_tokens=max_tokens, **params).text


def test_completions_and_chat_streamed_and_not(server, generator, tokenizer):
    url, _ = server
    client = _client(url)
    out = client.completions.create(model=MODEL, prompt="what is a set", max_tokens=20, temperature=0)
    assert out.choices[0].text == _alone(generator, tokenizer, "what is a set", 20)
    assert out.usage.prompt_tokens == len("what is a set") and out.usage.completion_tokens > 0
    streamed = client.completions.create(model=MODEL, prompt="what is a set", max_tokens=20, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == out.choices[0].finish_reason

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sort a list"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat.choices[0].message.content == _alone(generator, tokenizer, rendered, 16)
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens == len(rendered)
    parts = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                                stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    with httpx.stream("POST", url + "/v1/completions", json={"model": MODEL, "prompt": "ab", "max_tokens": 3,
                                                               "stream": True}) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_models_health_and_n_stop_seed(server, generator, tokenizer):
    url, _ = server
    client = _client(url)
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(url + "/health").json()["status"] == "ok"
    two = client.completions.create(model=MODEL, prompt="zip two lists", max_tokens=24, temperature=1.0, n=2, seed=5)
    again = client.completions.create(model=MODEL, prompt="zip two lists", max_tokens=24, temperature=1.0, n=2,
                                      seed=5)
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.text for c in two.choices] == [c.text for c in again.choices]  # seeded: reproducible
    full = _alone(generator, tokenizer, "read lines", 30)
    stop = full[10:12]
    cut = client.completions.create(model=MODEL, prompt="read lines", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == full[: full.index(stop)]


def test_32_concurrent_requests_each_equal_the_request_alone(server, generator, tokenizer):
    """Greedy requests of different prompts and lengths, and seeded sampled requests at
    different temperatures, all in flight together: each answer is the one it gets alone."""
    url, engine = server
    requests = []
    for i in range(32):
        prompt = WORDS[i % len(WORDS)] + " " + WORDS[(5 * i) % len(WORDS)][: i % 7]
        temperature = 0.0 if i % 3 else [0.7, 1.3][i % 2]
        requests.append(dict(prompt=prompt, max_tokens=8 + (i * 5) % 40, temperature=temperature, seed=100 + i))

    async def ask_all():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        return await asyncio.gather(*(client.completions.create(model=MODEL, **r) for r in requests))

    steps_before = engine.steps
    answers = asyncio.run(ask_all())
    for request, answer in zip(requests, answers):
        expected = _alone(generator, tokenizer, request["prompt"], request["max_tokens"],
                          temperature=request["temperature"], seed=request["seed"])
        assert answer.choices[0].text == expected, request
    # Batched: far fewer steps than the requests' steps one after another.
    assert engine.steps - steps_before < sum(r["max_tokens"] for r in requests) / 4


def _post(url, body, **kwargs):
    return httpx.post(url + "/v1/completions", json=body, **kwargs)


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "ab"}, 400, "model"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "ab", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "ab", "temperature": -0.5}, 400, "temperature"),
    ({"model": MODEL, "prompt": "ab", "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "prompt": "ab", "top_p": 1.5}, 400, "top_p"),
    ({"model": MODEL, "prompt": "ab", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "ab", "max_tokens": 65}, 400, "max_tokens"),  # above --max-tokens-limit
    ({"model": MODEL, "prompt": "a" * 60, "max_tokens": 40}, 400, "max_tokens"),  # past the context
    ({"model": MODEL, "prompt": "a" * CONTEXT}, 400, "prompt"),  # the prompt alone fills the context
    ({"model": "gpt-5", "prompt": "ab"}, 404, "model"),
    ({"model": MODEL, "prompt": "ab", "logprobs": 2}, 400, "logprobs"),
    ({"model": MODEL, "prompt": []}, 400, "prompt"),
    ([1, 2], 400, None),
])
def test_bad_input_is_a_4xx_error_object_and_the_server_keeps_serving(server, body, status, param):
    url, _ = server
    response = _post(url, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert _post(url, {"model": MODEL, "prompt": "ab", "max_tokens": 4}).status_code == 200


def test_malformed_json_and_bad_chat_messages(server):
    url, _ = server
    response = httpx.post(url + "/v1/completions", content=b'{"model": "tiny", "prompt": ', timeout=10,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    bad_role = httpx.post(url + "/v1/chat/completions",
                          json={"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]})
    assert bad_role.status_code == 400 and bad_role.json()["error"]["param"] == "messages.0.role"
    assert httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": []}).status_code == 400


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_its_row(generator, tokenizer, monkeypatch, stream):
    slowed(generator, monkeypatch)
    with running_server(generator, tokenizer) as (url, engine):
        body = {"model": MODEL, "prompt": "define a class", "max_tokens": 64, "stream": stream, "temperature": 0}
        if stream:
            with httpx.stream("POST", url + "/v1/completions", json=body) as response:
                next(response.iter_lines())  # one event, then hang up
                (request,) = engine.engine.running
        else:
            payload = json.dumps(body).encode()
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                            b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
                while not engine.engine.running:
                    time.sleep(0.01)
                (request,) = engine.engine.running
        deadline = time.monotonic() + 10
        while engine.num_running or not request.finished:
            assert time.monotonic() < deadline, "the row was not freed"
            time.sleep(0.01)
        assert request.finish_reason == "cancelled" and request.new < 64
        assert _post(url, {"model": MODEL, "prompt": "ab", "max_tokens": 4}).status_code == 200


def test_metrics_use_vllm_names_under_our_prefix(server):
    url, _ = server
    _post(url, {"model": MODEL, "prompt": "use a queue", "max_tokens": 12})
    _post(url, {"model": "unknown", "prompt": "use a queue"})
    text = httpx.get(url + "/metrics").text
    for name in ("specdistill:spec_decode_num_drafts_total", "specdistill:spec_decode_num_draft_tokens_total",
                 "specdistill:spec_decode_num_accepted_tokens_total", "specdistill:num_requests_running",
                 "specdistill:num_requests_waiting", "specdistill:time_to_first_token_seconds_bucket",
                 "specdistill:inter_token_latency_seconds_bucket", "specdistill:request_success_total"):
        assert name in text
    assert 'specdistill:spec_decode_num_accepted_tokens_per_pos_total{model_name="tiny",position="0"}' in text
    assert 'specdistill:request_errors_total{model_name="tiny",status="404"}' in text
    assert 'specdistill:request_success_total{finished_reason="length",model_name="tiny"}' in text


def test_queue_full_is_a_429_with_retry_after(generator, tokenizer, monkeypatch):
    # Slow enough that the first request (at least 15 steps of at most 4 tokens) still runs
    # when the third one arrives, on a loaded machine too.
    slowed(generator, monkeypatch, seconds=0.25)
    with running_server(generator, tokenizer, max_batch_size=1, max_queue=1) as (url, engine):
        body = {"model": MODEL, "prompt": "read lines", "max_tokens": 60, "temperature": 0}
        with httpx.stream("POST", url + "/v1/completions", json=body | {"stream": True}) as first:
            next(first.iter_lines())  # running: it holds the only row
            short = body | {"max_tokens": 2}
            waiting = threading.Thread(target=_post, args=(url, short), kwargs={"timeout": 60})
            waiting.start()
            deadline = time.monotonic() + 30
            while not engine.num_waiting:
                assert time.monotonic() < deadline, "the second request never waited"
                time.sleep(0.01)
            refused = _post(url, short, timeout=30)  # a loaded CI machine may answer slowly; the status is the test
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "queue_full"
        waiting.join(timeout=60)


def test_timeouts_end_requests_cleanly(generator, tokenizer, monkeypatch):
    slowed(generator, monkeypatch)
    with running_server(generator, tokenizer, request_timeout=0.3) as (url, engine):
        body = {"model": MODEL, "prompt": "map and filter", "max_tokens": 60, "temperature": 0}
        response = _post(url, body)
        assert response.status_code == 408 and response.json()["error"]["type"] == "timeout_error"
        with httpx.stream("POST", url + "/v1/completions", json=body | {"stream": True}) as streamed:
            lines = [line for line in streamed.iter_lines() if line]
        assert '"timeout_error"' in lines[-2] and lines[-1] == "data: [DONE]"
        deadline = time.monotonic() + 10
        while engine.num_running:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_api_key_and_body_limit(generator, tokenizer):
    with running_server(generator, tokenizer, api_key="sesame", max_body_bytes=2000) as (url, _):
        assert _post(url, {"model": MODEL, "prompt": "ab"}).status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # health stays open for probes
        out = _client(url).with_options(api_key="sesame").completions.create(model=MODEL, prompt="ab", max_tokens=3)
        assert out.choices[0].finish_reason in ("stop", "length")
        auth = {"authorization": "Bearer sesame", "content-type": "application/json"}
        big = _post(url, {"model": MODEL, "prompt": "a" * 5000}, headers=auth)
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        body = json.dumps({"model": MODEL, "prompt": "a" * 5000}).encode()
        chunked = httpx.post(url + "/v1/completions", content=iter([body[:1000], body[1000:]]), headers=auth)
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
        missing = httpx.get(url + "/v1/nothing", headers=auth)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_failing_step_fails_its_requests_with_500_and_the_server_goes_on(generator, tokenizer, monkeypatch):
    real, calls = generator.target_runner.forward, []

    def fails_once(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device on fire")
        return real(*args)

    monkeypatch.setattr(generator.target_runner, "forward", fails_once)
    with running_server(generator, tokenizer) as (url, _):
        response = _post(url, {"model": MODEL, "prompt": "print it", "max_tokens": 30, "temperature": 0})
        assert response.status_code == 500 and "device on fire" in response.json()["error"]["message"]
        assert _post(url, {"model": MODEL, "prompt": "print it", "max_tokens": 30}).status_code == 200


def test_the_engine_can_step_in_the_callers_thread(generator, tokenizer):
    """As `specdistill serve` runs it: the engine steps in this (the main) thread,
    uvicorn's event loop in another."""
    answers = []
    with running_server(generator, tokenizer, start_engine=False, max_batch_size=4) as (url, engine):

        def client():
            try:
                out = _client(url).completions.create(model=MODEL, prompt="open a file", max_tokens=12,
                                                      temperature=0)
                answers.append(out.choices[0].text)
            finally:
                engine.close()  # ends run_forever, also when the request failed

        asker = threading.Thread(target=client)
        asker.start()
        engine.run_forever()
        asker.join(timeout=30)
    assert answers == [_alone(generator, tokenizer, "open a file", 12)]
