"""The server under load: requests/s, output tokens/s, p50/p99 latency and time to first
token at several concurrencies, speculative vs the target alone, continuous batching vs
one request at a time. Each configuration is a real `specdistill serve` process on
127.0.0.1; the load comes from this process with the official `openai` client
(streamed chat requests over the held-out prompts, greedy).

    python bench/bench_server.py                         # serve's defaults: the default target, the shipped head
    python bench/bench_server.py --quick                 # concurrency 1 and 4, few requests: a smoke run
    python bench/bench_server.py --draft runs/demo/final # the draft `make demo` distils
    python bench/bench_server.py --draft-tree-max-batch 2    # the old fixed cap: chains above 2 rows

Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from specdistill.data.prompts import HELDOUT_PROMPTS


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--draft", default="default",
                        help="the draft of the speculative server (a directory, or default: the shipped head)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests = concurrency x this (>= 8)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--num-draft-tokens", default="auto")
    parser.add_argument("--draft-tree", default="auto", help="serve's flag: DEPTH,TOP_K,NODES, auto or none (a chain)")
    parser.add_argument("--draft-tree-max-batch", default="0",
                        help="serve's flag: 0 = the cost-aware policy picks tree or chain; N = larger batches "
                             "draft a chain")
    parser.add_argument("--draft-retrieval", default="auto", help="serve's flag: METHOD[:TOKENS], auto or none")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.requests_per_client, args.max_tokens = "1,4", 1, 32
    if args.draft != "default" and not (Path(args.draft) / "config.json").exists():
        sys.exit(f"no draft at {args.draft}: run `specdistill demo` first for runs/demo/final, or pass --draft "
                 "DIR or default")
    return args


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A `specdistill serve` process, up until the context ends."""

    def __init__(self, args, draft: str, max_batch_size: int):
        self.port = _free_port()
        self.command = [sys.executable, "-m", "specdistill.cli", "serve", "--port", str(self.port),
                        "--target", args.target, "--draft", draft, "--dtype", args.dtype,
                        "--num-draft-tokens", args.num_draft_tokens, "--max-batch-size", str(max_batch_size),
                        "--draft-tree", args.draft_tree if draft != "none" else "none",
                        "--draft-tree-max-batch", args.draft_tree_max_batch,
                        "--draft-retrieval", args.draft_retrieval if draft != "none" else "none",
                        "--max-queue", "256"]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("the server did not come up in 300 s")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=30)


async def _one(client, model, prompt, max_tokens) -> dict:
    start = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens}


async def load(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    """``requests`` requests from ``concurrency`` clients, each sending its next when one ends."""
    prompts = [HELDOUT_PROMPTS[i % len(HELDOUT_PROMPTS)] for i in range(requests)]
    results = []
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:

        async def worker(mine):
            for prompt in mine:
                results.append(await _one(client, model, prompt, max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker(prompts[i::concurrency]) for i in range(concurrency)))
        seconds = time.perf_counter() - start
    return _summary(results, seconds, concurrency)


def _summary(results, seconds, concurrency) -> dict:
    def pct(values, q):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    latencies, ttfts = [r["latency"] for r in results], [r["ttft"] for r in results]
    return {"concurrency": concurrency, "requests": len(results), "seconds": round(seconds, 2),
            "requests_per_s": round(len(results) / seconds, 3),
            "output_tokens_per_s": round(sum(r["tokens"] for r in results) / seconds, 2),
            "latency_p50_s": round(pct(latencies, 0.5), 3), "latency_p99_s": round(pct(latencies, 0.99), 3),
            "ttft_p50_s": round(pct(ttfts, 0.5), 3), "ttft_p99_s": round(pct(ttfts, 0.99), 3)}


def _acceptance(url: str) -> dict:
    """Acceptance from the server's own Prometheus counters (vLLM's definitions)."""
    values = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        for name in ("spec_decode_num_drafts_total", "spec_decode_num_draft_tokens_total",
                     "spec_decode_num_accepted_tokens_total"):
            if line.startswith(f"specdistill:{name}{{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    drafts, proposed = values.get("spec_decode_num_drafts_total", 0), values.get(
        "spec_decode_num_draft_tokens_total", 0)
    accepted = values.get("spec_decode_num_accepted_tokens_total", 0)
    return {"acceptance_rate": round(accepted / proposed, 3) if proposed else None,
            "mean_acceptance_length": round(1 + accepted / drafts, 3) if drafts else None}


def run_server(args, name: str, draft: str, batch: int, levels: list[int]) -> list[dict]:
    rows = []
    with Server(args, draft, batch) as server:
        model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        asyncio.run(load(server.url, model, 2, 2, 8))  # warm-up: first calls allocate
        for concurrency in levels:
            requests = max(8, concurrency * args.requests_per_client)
            result = asyncio.run(load(server.url, model, concurrency, requests, args.max_tokens))
            rows.append({"server": name, "max_batch_size": batch, **result})
            print(_line(rows[-1]), flush=True)
        acceptance = _acceptance(server.url)
    for row in rows:
        row.update(acceptance)
    return rows


def _line(row: dict) -> str:
    return (f"| {row['server']} | {row['max_batch_size']} | {row['concurrency']} | {row['requests']} | "
            f"{row['requests_per_s']:.2f} | {row['output_tokens_per_s']:.1f} | {row['latency_p50_s']:.2f} | "
            f"{row['latency_p99_s']:.2f} | {row['ttft_p50_s']:.3f} | {row['ttft_p99_s']:.3f} |")


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    print("| server | max batch | concurrency | requests | req/s | out tok/s | p50 s | p99 s | TTFT p50 s | "
          "TTFT p99 s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = run_server(args, "target alone", "none", args.max_batch_size, levels)
    rows += run_server(args, "speculative", args.draft, args.max_batch_size, levels)
    top = max(levels)
    # Continuous batching against one request at a time, at the highest concurrency.
    rows += run_server(args, "target alone", "none", 1, [top])
    rows += run_server(args, "speculative", args.draft, 1, [top])

    def tps(name, batch, level):
        return next(r["output_tokens_per_s"] for r in rows if r["server"] == name and r["max_batch_size"] == batch
                    and r["concurrency"] == level)

    summary = {
        "speculative_over_target": {c: round(tps("speculative", args.max_batch_size, c) /
                                             tps("target alone", args.max_batch_size, c), 3) for c in levels},
        f"batched_over_one_at_a_time_at_{top}": {
            name: round(tps(name, args.max_batch_size, top) / tps(name, 1, top), 3)
            for name in ("target alone", "speculative")},
    }
    print(json.dumps({"bench": "server", "config": vars(args), "rows": rows, **summary}))


if __name__ == "__main__":
    main()
