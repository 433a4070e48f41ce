"""One capture-adapt-swap cycle on a domain the shipped head drafts poorly (translation by default, or sql).

    python bench/bench_adapt.py                     # ~1,000 captured requests, 15 minutes of adapting
    python bench/bench_adapt.py --domain sql --out runs/adapt-sql   # text-to-SQL (held out: 3 schema domains)
    python bench/bench_adapt.py --capture-requests 200 --adapt-minutes 3 --out runs/adapt-small
    python bench/bench_adapt.py --reuse-capture runs/adapt/capture --ttt-steps 2 --out runs/adapt-ttt2   # adapt again
    python bench/bench_adapt.py --measure runs/adapt/head/final --rounds 3 --out runs/adapt-again   # measure again

1. capture  a real server (``specdistill serve``'s app, on loopback) with ``--capture --capture-features``
            answers ``--capture-requests`` requests of the domain, made from the standard library's
            documentation (``make-prompts --source tasks``; sql: from its templates), 16 clients at a time,
            greedy and T = 0.7 alternately; it keeps the target states it served them with, so the adapt reads them
2. adapt    ``specdistill adapt`` without ``--swap-url`` (its defaults: ``--lr 1e-3 --ttt-steps 3 --blend-start 0.3
            --head-vocab-size 13312``) for the minutes given, its check included: a tenth of the capture is held
            back, the shipped head and the adapted one are scored on it and on chat (predicted τ of a chain of
            4), and the JSON says whether the check would swap; the target states of the replayed records
            are computed (the captured ones are read: ``target_states`` in the JSON); the head's vocabulary
            grows by 1,024 of the answers' tokens it lacks; 20% of the records replay the shipped head's own
            training data, so it keeps chat; the exported head's weights are 30% the shipped head's; the
            adapted head's folder also holds the answers it trained on, the shipped corpus's and the captured
            ones, as its retrieval branch's corpus (``datastore.npz``), which serves with it
3. swap     ``POST /admin/draft`` while a wave of requests streams; every one must finish (whatever the
            check said: the benchmark measures the adapted head)
4. measure  the shipped head (before) and the adapted one (after) in turns prompt by prompt, ``--rounds``
            times each on every set, so that both see the same seconds of a host whose speed drifts:
            held-out requests of the domain, two sets (``--heldout``'s category: hand-written, other text
            than the capture's; and ``--heldout-generated`` requests made like the captured ones but never
            sent, the traffic the server sees next), and the held-out chat prompts. For sql the generated
            ones come from 3 schema domains the capture never uses, and the hand-written ones from other
            domains (``bench/prompts/sql-heldout.jsonl``); the captured requests are near-duplicates of each
            other (60–90 questions and 6 ways of asking per schema), so the check's held-back tenth is barely
            held out: the two held-out sets are the measure. Each generator's retrieval store starts with the
            capture's answers (the swap wave's included), as the live server's store of served outputs held them
            around the swap (the swap keeps it): the shipped head retrieves them too, so the figures are what
            the swap adds on that server (``--cold-store``: empty stores, as a restarted server's; until
            session 32 the benchmark measured so, which credited the adapt with the retrieval of the captured
            answers that the adapted head's corpus holds and the shipped head's store then lacked)

Also, per set, the check's score of both heads along the target's own greedy answers (teacher-forced predicted τ
of a chain of 4: the same tokens for both, where decoding in bf16 may flip a near-tie of the target's logits
with one head's verification and not the other's; the JSON counts the prompts whose tree outputs differ).

Each measurement has three rows: as served (k auto, tree, retrieval with each head's corpus and the served
answers: tokens/s, and τ of what the policy chose, which moves by ±0.3 between runs with the policy's
timing-driven choices), the tree with its retrieval branch on every step (τ of the head and its stores, no
policy), and a fixed chain of 4 (τ of the head alone); each figure is the mean over the rounds.

Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import time
from pathlib import Path

import httpx
import openai
import torch
from specdistill.serve import AsyncEngine, SpeculativeGenerator
from specdistill.serve.config import ServeConfig, load_generator
from specdistill.serve.datastore import corpus_for
from specdistill.serve.server import build_app, serving_in_thread
from specdistill.serve.stats import SpecStats

from specdistill.adapt import AdaptConfig, run_adapt, score
from specdistill.data.batches import record_rows
from specdistill.data.captured import read_capture
from specdistill.data.corpora import stdlib_files
from specdistill.data.prompts import HELDOUT_PROMPTS, Conversation, by_category, read_conversations
from specdistill.data.sql_prompts import DOMAINS as SQL_DOMAINS
from specdistill.data.sql_prompts import sql_prompts
from specdistill.data.task_prompts import module_docs, task_prompts
from specdistill.measure import measure_speculative
from specdistill.models import load_target
from specdistill.models.drafts import load_draft
from specdistill.teacher.target_answers import answer_prompts
from specdistill.training.sources import pad_id

ROOT = Path(__file__).resolve().parents[1]
# The adapt unrolls 3 draft positions, not the shipped head's 4: a third more steps in the budget. With 2 (twice
# the steps) the domain gained as much but chat's chain fell by 0.15; with 3 it held (RESULTS, session 26).
TTT_STEPS = 3
# The adapted head is blended 0.3 with the shipped one: on the same two heads the domain's tree gained as much
# (+0.35/+0.25 against +0.25/+0.34) and chat's tree lost half as much (-0.19 against -0.34; RESULTS, session 27).
BLEND_START = 0.3


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="translation", help="a task of make-prompts --source tasks")
    parser.add_argument("--heldout", default="", help="hand-written held-out requests with the domain's category "
                        "(default: bench/prompts/sql-heldout.jsonl for sql, else broad-heldout.jsonl)")
    parser.add_argument("--capture-requests", type=int, default=1000)
    parser.add_argument("--measure", default="", metavar="HEAD",
                        help="only measure this adapted head (an earlier run's OUT/head/final) against the shipped "
                             "one: no capture, adapt or swap (give the run's --domain, --seed, --capture-requests and "
                             "--heldout-generated: they make the held-out requests; the report holds the measure "
                             "only)")
    parser.add_argument("--reuse-capture", default="",
                        help="adapt on this capture folder (an earlier run's OUT/capture) instead of capturing anew; "
                             "with --measure, the capture whose answers fill the stores (default: the head's run's)")
    parser.add_argument("--adapt-minutes", type=float, default=15.0, help="the whole adapt, feature cache included")
    parser.add_argument("--heldout-generated", type=int, default=20,
                        help="requests made like the captured ones, never sent before the swap, measured too")
    parser.add_argument("--replay", default=str(ROOT / "bench/data/default-draft-train-v4.jsonl.gz"),
                        help="records mixed into the capture (empty: none): the shipped head's training data")
    parser.add_argument("--lr", type=float, default=1e-3, help="the adapt's peak learning rate (cosine to 10%%)")
    parser.add_argument("--ttt-steps", type=int, default=TTT_STEPS,
                        help="draft positions the adapt unrolls (the shipped head trained with 4)")
    parser.add_argument("--freeze-lm-head", action="store_true",
                        help="keep the head's LM head as shipped: the adapt trains its projection and layer")
    parser.add_argument("--blend-start", type=float, default=BLEND_START,
                        help="the adapted head's weights this share the shipped head's (WiSE-FT; 0: none)")
    parser.add_argument("--head-vocab-size", type=int, default=13312,
                        help="the adapted head's draft vocabulary (the shipped head's 12,288: no tokens added)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--capture-features", action=argparse.BooleanOptionalAction, default=True,
                        help="the server keeps the target states of what it serves (serve --capture-features), so "
                             "the adapt runs the target over the replayed records alone")
    parser.add_argument("--states-cache", default="",
                        help="the adapt's folder of computed target states (default OUT/features); one kept from an "
                             "earlier run skips the replay's")
    parser.add_argument("--cold-store", action="store_true",
                        help="measure both heads with empty retrieval stores (a restarted server), not with the "
                             "outputs served while capturing (the live server at the swap)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", default="runs/adapt")
    parser.add_argument("--num-heldout", type=int, default=0, help="measure the first N of each set (0 = all)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each head on each set, in turns")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def domain_prompts(domain: str, count: int, heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """``count`` and ``heldout`` distinct first turns of the domain's task prompts: from the standard library's
    documentation, the held-out ones from a tenth of its modules, which the others never use, so that they
    share no document with the captured requests; for ``sql``, the held-out ones from three of its template
    domains (schemas) that the others never use."""
    rng = random.Random(seed)
    if domain == "sql":
        names = sorted(SQL_DOMAINS)
        rng.shuffle(names)
        return ([r["prompt"] for r in sql_prompts(count, rng, names[3:])],
                [r["prompt"] for r in sql_prompts(heldout, rng, names[:3])])
    docs = module_docs(stdlib_files())
    rng.shuffle(docs)
    cut = max(1, len(docs) // 10)

    def first_turns(share, n: int) -> list[str]:
        rows = task_prompts(domain, share, 2 * n, rng)
        return list(dict.fromkeys(r["prompt"] if "prompt" in r else r["turns"][0] for r in rows))[:n]
    return first_turns(docs[cut:], count), first_turns(docs[:cut], heldout)


def measure(target, tokenizer, heads: dict, sets: dict[str, list[Conversation]], max_tokens: int,
            rounds: int, store: list[list[int]] = ()) -> dict:
    """Each head on each set, as served (k auto, tree, retrieval), with the tree on every step and as a chain of 4,
    ``rounds`` times: within a round each head keeps one generator per mode over the set (as one server
    would: its policy learns across requests), and the heads take each prompt in turn, so both see the same
    seconds of a host whose speed drifts within minutes. Each generator's retrieval store starts with the
    outputs in ``store``, as the server's held them at the swap. Per head and set, the means over the rounds."""
    modes = {"served": dict(num_draft_tokens="auto", draft_confidence=0.4, draft_tree="auto", draft_retrieval="auto"),
             "tree": dict(num_draft_tokens=4, draft_confidence=0.4, draft_tree="auto", draft_retrieval="auto"),
             "chain4": dict(num_draft_tokens=4)}
    runs = {label: {name: [] for name in sets} for label in heads}
    for name, conversations in sets.items():
        for _ in range(rounds):
            generators = {label: {mode: SpeculativeGenerator(target, head, **settings)
                                  for mode, settings in modes.items()} for label, head in heads.items()}
            for generator in (g for by_mode in generators.values() for g in by_mode.values() if g.draft_retrieval):
                for output in store:
                    generator.draft_retrieval.learn(output)
            stats = {label: {mode: SpecStats() for mode in modes} for label in heads}
            tree_outputs = {label: [] for label in heads}
            for i, conversation in enumerate(conversations):
                for label in (list(heads) if i % 2 == 0 else list(heads)[::-1]):
                    for mode, generator in generators[label].items():
                        result = measure_speculative(target, None, tokenizer, [conversation], max_new_tokens=max_tokens,
                                                     progress=False, generator=generator)
                        stats[label][mode] = stats[label][mode].merge(result["stats"])
                        if mode == "tree":
                            tree_outputs[label].append(result["outputs"])
            # In bf16 a verification pass of another shape can flip a near-tie of the target's logits: the
            # heads' outputs then differ (and a flip into or out of a repetition moves a set's tau a lot).
            differ = sum(len({str(outputs[i]) for outputs in tree_outputs.values()}) > 1
                         for i in range(len(conversations)))
            for label in heads:
                served, tree, chain = (stats[label][mode] for mode in ("served", "tree", "chain4"))
                runs[label][name].append({"tau": served.tau, "tokens_per_s": served.tokens_per_second,
                                          "tree_tau": tree.tau, "tree_tokens_per_s": tree.tokens_per_second,
                                          "chain4_tau": chain.tau, "chain4_tokens_per_s": chain.tokens_per_second,
                                          "tree_outputs_differ": differ})
                print(f"  {label:6} {name:22} served: tau {served.tau:.2f}, {served.tokens_per_second:.1f} "
                      f"tok/s; tree: tau {tree.tau:.2f}; chain of 4: tau {chain.tau:.2f}", flush=True)
    return {label: {name: {key: round(sum(r[key] for r in rows) / len(rows), 3) for key in rows[0]}
                    for name, rows in by_set.items()} for label, by_set in runs.items()}


def teacher_forced(target, tokenizer, heads: dict, sets: dict[str, list[Conversation]], max_tokens: int,
                   out: Path) -> dict:
    """Per set and head, ``specdistill adapt``'s score along the target's own greedy answers (made once, kept in
    ``out``): the same tokens for both heads, so no near-tie flip moves it."""
    answers = {name: record_rows(answer_prompts(target, tokenizer, [c.turns[0] for c in conversations],
                                                out / f"answers-{name}.jsonl", max_tokens), pad_id(tokenizer))
               for name, conversations in sets.items()}
    return {label: score(target, head, answers) for label, head in heads.items()}


@contextlib.contextmanager
def serving(config: ServeConfig):
    """The real server on loopback; yields its URL and engine."""
    generator, tokenizer, _ = load_generator(config)
    engine = AsyncEngine(generator.engine(config.max_batch_size), config.max_queue)
    with serving_in_thread(build_app(engine, tokenizer, config, config.served_name())) as url:
        yield url, engine


async def send_all(url: str, model: str, prompts: list[str], max_tokens: int, clients: int,
                   during=None) -> tuple[int, int, object]:
    """Every prompt as a streamed chat request, ``clients`` at a time (greedy and T = 0.7 in turn);
    ``during`` (a coroutine function) runs once the first wave is in flight. Returns (finished, failed,
    what ``during`` returned)."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    gate, finished, failed = asyncio.Semaphore(clients), 0, 0

    async def one(i: int, prompt: str):
        nonlocal finished, failed
        async with gate:
            try:
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                    temperature=0.0 if i % 2 == 0 else 0.7, seed=i, stream=True)
                reason = None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        reason = chunk.choices[0].finish_reason
                finished += reason is not None
                failed += reason is None
            except openai.OpenAIError:
                failed += 1

    tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(prompts)]
    extra = None
    if during is not None:
        await asyncio.sleep(2.0)  # the first wave is decoding
        extra = await during()
    await asyncio.gather(*tasks)
    return finished, failed, extra


def adapt(capture: Path, out: Path, args) -> dict:
    """``specdistill adapt`` without its swap (step 3 swaps while a wave streams): fine-tune the shipped head on
    the capture for ``--adapt-minutes`` in all, checked on a tenth of the capture held back, and chat."""
    config = AdaptConfig()
    train_config = dataclasses.replace(
        config.train, data=str(capture), replay=args.replay or "", output_dir=str(out / "head"),
        feature_cache=args.states_cache or str(out / "features"), lr=args.lr, ttt_steps=args.ttt_steps,
        freeze_lm_head=args.freeze_lm_head,
        blend_start=args.blend_start, head_vocab_size=args.head_vocab_size, max_minutes=args.adapt_minutes,
        seed=args.seed)
    return run_adapt(dataclasses.replace(config, train=train_config))


def check_seed(head: Path, seed: int) -> None:
    """--measure: the generated held-out requests come from the schema domains or modules that ``--seed`` kept out
    of the capture, so measuring with another seed than the head's run would measure it on its own training
    traffic."""
    config = head.parent / "train_config.json"  # OUT/head/train_config.json beside OUT/head/final
    trained = json.loads(config.read_text()).get("seed") if config.is_file() else None
    if trained is not None and trained != seed:
        raise SystemExit(f"{head} was adapted with --seed {trained}: measure it with --seed {trained} (its "
                         f"held-out requests are kept out of that seed's capture), not {seed}")


def served_outputs(capture: Path) -> list[list[int]]:
    """The answers the server gave while capturing (its finished requests): its retrieval store held them at the
    swap, for the shipped head as for the adapted one, so both are measured with them."""
    if not capture.is_dir():
        raise SystemExit(f"no capture folder at {capture}: give --reuse-capture the one the head was adapted on, "
                         "or --cold-store to measure with empty retrieval stores")
    return [list(answer) for answer in read_capture(str(capture), "smollm2-135m")["answer_ids"]]


def run_cycle(args, out: Path, captured_prompts: list[str], wave: list[str]) -> dict:
    """Steps 1-3: capture on a real server, adapt, swap while a wave streams; what each step reported."""
    capture = Path(args.reuse_capture) if args.reuse_capture else out / "capture"
    config = ServeConfig(capture="" if args.reuse_capture else str(capture), max_batch_size=args.clients,
                         max_queue=4 * args.capture_requests,
                         capture_features=args.capture_features and not args.reuse_capture)
    with serving(config) as (url, engine):
        start = time.perf_counter()
        if args.reuse_capture:
            captured, lost = len(read_capture(str(capture), config.target)), 0  # its finished records
        else:
            captured, lost, _ = asyncio.run(send_all(url, config.served_name(), captured_prompts, args.max_tokens,
                                                     args.clients))
        capture_minutes = (time.perf_counter() - start) / 60
        print(f"captured {captured} requests in {capture_minutes:.1f} min ({lost} failed)", flush=True)
        trained = adapt(capture, out, args)
        adapted = trained["draft"]
        print(f"adapted for {trained['minutes']} min, {trained['steps']} steps; the check would "
              f"{'swap it' if trained['swap'] else 'keep it back'}: {trained['reason']}", flush=True)

        async def swap():
            response = await asyncio.to_thread(httpx.post, url + "/admin/draft", json={"draft": str(adapted)},
                                               timeout=600)
            return response.status_code, response.json()
        done, dropped, (status, swapped) = asyncio.run(send_all(url, config.served_name(), wave,
                                                                args.max_tokens, args.clients, during=swap))
        print(f"swap: HTTP {status} {swapped}; {done} requests finished around it, {dropped} dropped", flush=True)
        metrics = httpx.get(url + "/metrics").text
    return {"capture": str(capture), "captured": captured, "capture_failed": lost,
            "capture_minutes": round(capture_minutes, 2),
            "adapt": trained, "swap_status": status, "swap": swapped, "finished_around_swap": done,
            "dropped_around_swap": dropped,
            "by_draft_metrics": [line for line in metrics.splitlines() if "_by_draft_total{" in line]}


def main():
    args = parse_args()
    args.heldout = args.heldout or str(ROOT / "bench/prompts" / ("sql-heldout.jsonl" if args.domain == "sql"
                                                                   else "broad-heldout.jsonl"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heldout = by_category(read_conversations(args.heldout))
    if args.domain not in heldout:
        raise SystemExit(f"{args.heldout} has no {args.domain!r} records; its categories: {sorted(heldout)}")
    # The capture's requests and the wave around the swap, and the generated held-out ones from other modules.
    captured_prompts, generated = domain_prompts(args.domain, args.capture_requests + 64, args.heldout_generated,
                                                 args.seed)
    captured_prompts, wave = captured_prompts[:-64], captured_prompts[-64:]
    sets = {args.domain: heldout[args.domain][: args.num_heldout or None],
            f"{args.domain}-generated": [Conversation.of(p) for p in generated],
            "chat": [Conversation.of(p) for p in HELDOUT_PROMPTS][: args.num_heldout or None]}
    # --measure: an adapted head measured again (another host, more rounds), no capture, adapt or swap.
    if args.measure:
        run = Path(args.measure).resolve().parents[1]  # OUT of OUT/head/final
        check_seed(Path(args.measure), args.seed)
        if out.resolve() == run:
            raise SystemExit(f"--out {args.out} is the measured head's run folder: give another, so its report stays")
        cycle = {"capture": args.reuse_capture or str(run / "capture"), "adapt": {"draft": args.measure}}
    else:
        cycle = run_cycle(args, out, captured_prompts, wave)
    adapted = cycle["adapt"]["draft"]
    served = [] if args.cold_store else served_outputs(Path(cycle["capture"]))
    target, tokenizer = load_target("smollm2-135m", dtype=torch.bfloat16)
    heads = {"before": load_draft("default", target, torch.bfloat16)[0],
             "after": load_draft(str(adapted), target, torch.bfloat16)[0]}
    corpus_tokens = {label: len(corpus_for(head, head.vocab_size).tokens) for label, head in heads.items()}
    print("the shipped head (before) and the adapted one (after), in turns", flush=True)
    print(f"each retrieval store starts with the {len(served)} outputs served before the measurement", flush=True)
    measured = measure(target, tokenizer, heads, sets, args.max_tokens, args.rounds, served)
    before, after = measured["before"], measured["after"]
    forced = teacher_forced(target, tokenizer, heads, sets, args.max_tokens, out)
    report = {"domain": args.domain, "rounds": args.rounds, **cycle, "served_store": len(served),
              "corpus_tokens": corpus_tokens, "before": before, "after": after,
              "tau_gain": {k: round(after[k]["tau"] - before[k]["tau"], 3) for k in sets},
              "tree_tau_gain": {k: round(after[k]["tree_tau"] - before[k]["tree_tau"], 3) for k in sets},
              "chain4_tau_gain": {k: round(after[k]["chain4_tau"] - before[k]["chain4_tau"], 3) for k in sets},
              "speedup": {k: round(after[k]["tokens_per_s"] / before[k]["tokens_per_s"], 3) for k in sets},
              "teacher_forced": forced,
              "teacher_forced_gain": {k: round(forced["after"][k]["tau"] - forced["before"][k]["tau"], 3)
                                      for k in sets}}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\n{'set':22} {'tau before':>10} {'after':>6} {'tok/s before':>13} {'after':>6} {'x':>6} "
          f"{'tree tau before':>16} {'after':>6} {'chain-4 tau before':>19} {'after':>6} {'forced before':>14} "
          f"{'after':>6}")
    for name in sets:
        b, a = before[name], after[name]
        print(f"{name:22} {b['tau']:10.2f} {a['tau']:6.2f} {b['tokens_per_s']:13.1f} {a['tokens_per_s']:6.1f} "
              f"{report['speedup'][name]:6.2f} {b['tree_tau']:16.2f} {a['tree_tau']:6.2f} {b['chain4_tau']:19.2f} "
              f"{a['chain4_tau']:6.2f} {forced['before'][name]['tau']:14.2f} {forced['after'][name]['tau']:6.2f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
