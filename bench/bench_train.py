"""Training throughput against the time bound of its parts, for the default target.

One optimizer step of `specdistill train` (the real ``TrainLoop.step``: batch, teacher
forward, draft forward + fused-linear loss + backward, clipping, AdamW) is timed and
set against the sum of its parts, each timed alone on the same rows: the teacher's
forward, the draft's forward/loss/backward on precomputed teacher states, and the
optimizer step. efficiency = bound / step (goal: >= 0.8, i.e. at most 20% of a step
goes to glue). Run once in one process (all cores) and once under torchrun with two
gloo DDP processes (one thread each), where the bound is the slower process's parts
and the step also pays for the gradient all-reduce.

    python bench/bench_train.py                 # batch 8 x 256 tokens, 4 timed steps
    python bench/bench_train.py --quick         # batch 4 x 128, 2 timed steps

Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from specdistill.data.batches import TokenRows
from specdistill.data.corpora import split_files, stdlib_files, token_chunks
from specdistill.losses import compute_linear_distill_loss, compute_sparse_distill_loss
from specdistill.models import decoder_and_head, load_target, prune_draft
from specdistill.training.config import TrainConfig
from specdistill.training.loop import TrainLoop
from specdistill.training.onpolicy import OnPolicyBatches
from specdistill.training.step import Student, autocast
from specdistill.training.teacher_cache import CachedRows, teacher_topk
from specdistill.training.trainer import _lr_factor, trainable_parameters


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch (rows)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)  # a torchrun process: write results here
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_len, args.steps = 4, 128, 2
    return args


def _timed(fn, repeats: int) -> float:
    """The median of ``repeats`` timings of ``fn()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(args) -> dict:
    """Step and part timings in this process (one of ``world`` when under torchrun)."""
    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    config = TrainConfig(target=args.target, batch_size=args.batch_size, seq_len=args.seq_len, report_to="none",
                         output_dir=tempfile.mkdtemp(prefix="bench_train_"), warmup_steps=1)
    target, tokenizer = load_target(args.target)
    target.eval()
    draft = prune_draft(target, [0, 1, 2, -1]).float().train()
    files, _ = split_files(stdlib_files(), 0.05, seed=0)
    chunks = token_chunks(tokenizer, files, args.seq_len, 64 * args.seq_len * args.batch_size, progress=False)
    rows = TokenRows.from_chunks(chunks)
    params = trainable_parameters(draft, False)
    student = Student(draft, hidden=True)
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    if world > 1:
        student = accelerator.prepare(student)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    onpolicy = OnPolicyBatches([], 0.0, 1.0, 1, args.seq_len, 0, 0)
    loop = TrainLoop(config, accelerator, target, student, draft, tokenizer, rows, optimizer, scheduler, params,
                     onpolicy, [])
    step_counter = iter(range(10**9))
    _timed(lambda: loop.step(next(step_counter)), 2)  # warm-up: allocations, first-call costs
    step_s = _timed(lambda: loop.step(next(step_counter)), args.steps)

    batch = rows.batch(0, args.batch_size, 0).rows(slice(rank, None, world))
    device = accelerator.device
    teacher_decoder, teacher_head = decoder_and_head(target)
    labels = batch.labels(hard=False)

    def teacher():
        with torch.no_grad(), autocast(device, True):
            return teacher_decoder(input_ids=batch.input_ids).last_hidden_state

    hidden = teacher()
    inner = getattr(student, "module", student)

    def draft_part():  # compute only: under DDP the gradient all-reduce belongs to the step, not to a part
        with student.no_sync() if world > 1 else contextlib.nullcontext(), autocast(device, True):
            loss, _ = compute_linear_distill_loss(
                inner(batch.input_ids), decoder_and_head(draft)[1], teacher_hidden=hidden,
                teacher_weight=teacher_head, labels=labels, reduction="sum", return_acceptance=True)
        loss.backward()

    def optimizer_part():
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the grads: each repeat steps with real ones

    draft_part()
    parts = {"teacher_forward_s": _timed(teacher, args.steps), "draft_fwd_bwd_s": _timed(draft_part, args.steps),
             "optimizer_s": _timed(optimizer_part, args.steps)}
    optimizer.zero_grad(set_to_none=True)
    tokens = args.batch_size * args.seq_len
    result = {"processes": world, "rank": rank, "threads": torch.get_num_threads(), "step_s": step_s, **parts,
              "bound_s": sum(parts.values()), "global_tokens": tokens}
    if world == 1:
        result["cached"] = measure_cached(args, config, accelerator, target, tokenizer, draft, rows, params)
    return result


def measure_cached(args, config, accelerator, target, tokenizer, draft, rows, params) -> dict:
    """The step from a top-64 teacher cache (``train --teacher-cache``): no teacher forward,
    the draft's full logits and the sparse loss instead of the fused-linear one."""
    few = slice(0, 2 * args.batch_size)
    ids, mask = rows.input_ids[few], rows.loss_mask[few]
    cached = CachedRows(ids, mask, *teacher_topk(target, ids, mask, 64, 1.0, True, args.batch_size))
    student = Student(draft, hidden=False)
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loop = TrainLoop(config, accelerator, None, student, draft, tokenizer, cached, optimizer, scheduler, params,
                     OnPolicyBatches([], 0.0, 1.0, 1, args.seq_len, 0, 0), [])
    counter = iter(range(10**9))
    _timed(lambda: loop.step(next(counter)), 1)
    step_s = _timed(lambda: loop.step(next(counter)), args.steps)
    batch = cached.batch(0, args.batch_size, 0)

    def draft_part():
        with autocast(accelerator.device, True):
            loss, _ = compute_sparse_distill_loss(student(batch.input_ids), *batch.teacher,
                                                  labels=batch.labels(hard=False), reduction="sum",
                                                  return_acceptance=True)
        loss.backward()

    draft_s = _timed(draft_part, args.steps)
    optimizer.zero_grad(set_to_none=True)
    return {"step_s": step_s, "draft_fwd_bwd_s": draft_s}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_processes(args) -> dict:
    """The same measurement under torchrun with 2 processes of 1 thread each."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank{rank}.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", str(_free_port()), __file__, "--worker", str(out),
                   "--target", args.target, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                   "--steps", str(args.steps)]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        if run.returncode != 0:
            sys.exit(f"the 2-process run failed:\n{run.stderr[-3000:]}")
        ranks = [json.loads(Path(str(out).format(rank=r)).read_text()) for r in range(2)]
    slowest = max(ranks, key=lambda r: r["bound_s"])
    return slowest | {"step_s": max(r["step_s"] for r in ranks)}


def _row(name: str, r: dict) -> str:
    tokens_per_s = r["global_tokens"] / r["step_s"]
    bound_tokens_per_s = r["global_tokens"] / r["bound_s"]
    return (f"{name:<26}{r['teacher_forward_s'] * 1e3:>9.0f}{r['draft_fwd_bwd_s'] * 1e3:>10.0f}"
            f"{r['optimizer_s'] * 1e3:>8.0f}{r['bound_s'] * 1e3:>9.0f}{r['step_s'] * 1e3:>9.0f}"
            f"{tokens_per_s:>10.0f}{bound_tokens_per_s:>10.0f}{r['bound_s'] / r['step_s']:>8.2f}")


def main():
    args = parse_args()
    if args.worker:
        result = measure(args)
        Path(args.worker.format(rank=result["rank"])).write_text(json.dumps(result))
        return
    one = measure(args)
    two = run_two_processes(args)
    print(f"\nbatch {args.batch_size} x {args.seq_len} tokens, bf16 autocast, fused-linear loss, "
          f"{args.steps} timed steps (medians, ms)")
    print(f"{'':<26}{'teacher':>9}{'draft f+b':>10}{'optim':>8}{'bound':>9}{'step':>9}{'tok/s':>10}"
          f"{'bound/s':>10}{'eff.':>8}")
    print(_row(f"1 process, {one['threads']} threads", one))
    print(_row("2 processes x 1 thread", two))
    cached = one["cached"]
    cached_row = {"teacher_forward_s": 0.0, "draft_fwd_bwd_s": cached["draft_fwd_bwd_s"],
                  "optimizer_s": one["optimizer_s"], "step_s": cached["step_s"], "global_tokens": one["global_tokens"]}
    cached_row["bound_s"] = cached_row["draft_fwd_bwd_s"] + cached_row["optimizer_s"]
    print(_row("1 process, top-64 cache", cached_row))
    summary = {
        "batch_size": args.batch_size, "seq_len": args.seq_len,
        "one_process": {"tokens_per_s": round(one["global_tokens"] / one["step_s"], 1),
                        "bound_tokens_per_s": round(one["global_tokens"] / one["bound_s"], 1),
                        "efficiency": round(one["bound_s"] / one["step_s"], 3),
                        **{k: round(one[k], 4) for k in ("teacher_forward_s", "draft_fwd_bwd_s", "optimizer_s")}},
        "two_processes": {"tokens_per_s": round(two["global_tokens"] / two["step_s"], 1),
                          "bound_tokens_per_s": round(two["global_tokens"] / two["bound_s"], 1),
                          "efficiency": round(two["bound_s"] / two["step_s"], 3),
                          **{k: round(two[k], 4) for k in ("teacher_forward_s", "draft_fwd_bwd_s", "optimizer_s")}},
        "one_process_top64_cache": {"tokens_per_s": round(one["global_tokens"] / cached["step_s"], 1),
                                    "efficiency": round(cached_row["bound_s"] / cached["step_s"], 3),
                                    "draft_fwd_bwd_s": round(cached["draft_fwd_bwd_s"], 4)},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
