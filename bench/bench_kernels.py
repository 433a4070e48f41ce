"""Distillation-loss kernels: time and peak extra memory of forward + backward.

Two sections, each a set of implementations of the same loss on the same inputs:

- ``div``: loss from given student/teacher logits [N, V]: the eager reference,
  the fused Triton kernel (CUDA), Liger-Kernel's JSD (CUDA, jsd only, when installed).
- ``linear``: loss from the draft's hidden states [N, H] and LM head [V, H]:
  materialized logits + reference, the chunked eager path, the chunked Triton
  path (CUDA), Liger's fused-linear JSD (CUDA, teacher as hidden states, when installed).

On CUDA a ``copy`` line measures device-to-device copy bandwidth, and the fused
kernel's bandwidth is reported against it (bytes actually moved: the forward
reads both logits twice, the backward reads them once and writes the gradient).
Peak extra memory is what a step needs beyond its inputs: on CUDA from the
allocator's peak, on CPU from the peak RSS of a fresh process per case.
Ratios come from one run (shared machines are noisy). Prints a table, then one JSON line.

    python bench/bench_kernels.py                          # CPU: linear section, N = 2048 (~1 min)
    python bench/bench_kernels.py --n 4096                 # CPU: the goal shape (~2 min, ~5 GB)
    python bench/bench_kernels.py --device cuda --sweep    # GPU: both sections, copy bandwidth, tuning
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from specdistill.losses import chunked_linear_distill_loss, distill_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def make_inputs(case: str, a, device: str) -> dict:
    """Random inputs for one case; the student side requires grad."""
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[a.dtype]

    def rand(*shape, scale=1.0, grad=False):
        x = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return x.requires_grad_(grad)

    if case.startswith("div/"):
        return dict(s=rand(a.n, a.vocab, scale=3, grad=True), t=rand(a.n, a.vocab, scale=3))
    x = dict(h=rand(a.n, a.hidden, grad=True), w=rand(a.vocab, a.hidden, scale=a.hidden**-0.5, grad=True))
    if a.teacher == "logits" and case != "linear/liger":
        x["t"] = rand(a.n, a.vocab, scale=3)
    else:
        x["th"] = rand(a.n, a.hidden, scale=1)
        x["tw"] = rand(a.vocab, a.hidden, scale=a.hidden**-0.5)
    return x


def step(case: str, x: dict, a) -> None:
    """One forward + backward of ``case``."""
    kw = dict(divergence=a.divergence, temperature=a.temperature)
    teacher = dict(teacher_logits=x["t"]) if "t" in x else dict(teacher_hidden=x["th"], teacher_weight=x["tw"])
    if case == "div/reference":
        loss = distill_loss(x["s"], x["t"], **kw)
    elif case == "div/fused":
        from specdistill.kernels import fused_distill_loss

        loss = fused_distill_loss(x["s"], x["t"], **kw)
    elif case == "div/liger":
        from liger_kernel.transformers import LigerJSD

        lq = torch.log_softmax(x["s"].float() / a.temperature, -1)
        lp = torch.log_softmax(x["t"].float() / a.temperature, -1)
        loss = LigerJSD(beta=0.5)(lq, lp)
    elif case == "linear/materialized":
        t = x["t"] if "t" in x else (x["th"] @ x["tw"].t()).detach()
        loss = distill_loss(x["h"] @ x["w"].t(), t, **kw)
    elif case == "linear/chunked-torch":
        loss = chunked_linear_distill_loss(x["h"], x["w"], chunk_size=a.chunk, **teacher, **kw)
    elif case == "linear/chunked-triton":
        from specdistill.kernels import fused_linear_distill_loss

        loss = fused_linear_distill_loss(x["h"], x["w"], chunk_size=a.chunk, **teacher, **kw)
    elif case == "linear/liger":
        from liger_kernel.transformers import LigerFusedLinearJSD

        loss = LigerFusedLinearJSD(jsd_beta=0.5, temperature=a.temperature)(x["h"], x["w"], x["th"], x["tw"], None)
    else:
        raise ValueError(case)
    loss.backward()


def _clear_grads(x: dict) -> None:
    for v in x.values():
        v.grad = None


def measure(case: str, a, device: str) -> dict:
    """Median time over ``a.reps`` steps after one warm-up step, and the warm-up's peak extra memory."""
    x = make_inputs(case, a, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step(case, x, a)
    sync()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    # The eager chunked path on a GPU is a reference point, not a contender: a few steps suffice.
    reps = min(a.reps, 3) if case == "linear/chunked-torch" and device == "cuda" else a.reps
    for _ in range(reps):
        _clear_grads(x)
        sync()
        start = time.perf_counter()
        step(case, x, a)
        sync()
        times.append(time.perf_counter() - start)
    return dict(case=case, ms=1e3 * statistics.median(times), peak_mib=peak / 2**20)


def measure_in_child(case: str, a) -> dict:
    """CPU peak RSS only rises, so each case runs in a fresh process."""
    args = [sys.executable, __file__, "--child", case] + [f"--{k.replace('_', '-')}={v}" for k, v in _shape(a).items()]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return dict(case=case, error=out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _shape(a) -> dict:
    keys = ("n", "vocab", "hidden", "dtype", "divergence", "temperature", "teacher", "chunk", "reps")
    return {k: getattr(a, k) for k in keys if getattr(a, k) is not None}


def copy_bandwidth(a) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) at the logits' size."""
    src = torch.empty(a.n, a.vocab, dtype=DTYPES[a.dtype], device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def sweep(a) -> list[dict]:
    """Fused forward + backward at several (block, warps): the numbers to pick the defaults from."""
    from dataclasses import replace

    from specdistill.kernels.fused_divergence import launch_backward, launch_forward, make_config
    from specdistill.kernels.loss_args import LossOptions

    x = make_inputs("div/fused", a, "cuda")
    s, t = x["s"].detach(), x["t"]
    scale = torch.full((a.n,), 1.0 / a.n, device="cuda")
    out = torch.empty_like(s)
    rows = []
    for block, warps in ((2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16), (8192, 32)):
        options = LossOptions(divergence=a.divergence, temperature=a.temperature)
        cfg = replace(make_config(options, False, a.vocab, block), num_warps=warps)

        def fwd_bwd(cfg=cfg):
            _, _, stats = launch_forward(s, t, None, cfg)
            launch_backward(s, t, None, stats, scale, cfg, out)

        fwd_bwd()
        torch.cuda.synchronize()
        times = []
        for _ in range(a.reps):
            start = time.perf_counter()
            fwd_bwd()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows.append(dict(block=block, warps=warps, ms=1e3 * statistics.median(times)))
    return rows


def run(a) -> dict:
    device = a.device
    cases = []
    if "div" in a.sections:
        cases += ["div/reference"]
        if device == "cuda":
            cases += ["div/fused"] + (["div/liger"] if _has("liger_kernel") and a.divergence == "jsd" else [])
    if "linear" in a.sections:
        cases += ["linear/materialized", "linear/chunked-torch"]
        if device == "cuda":
            cases += ["linear/chunked-triton"] + (["linear/liger"] if _has("liger_kernel") else [])
    results = {}
    for case in cases:
        r = measure(case, a, device) if device == "cuda" else measure_in_child(case, a)
        results[case] = r
        if device == "cuda":
            torch.cuda.empty_cache()
    report = dict(bench="kernels", device=_device_name(device), shape=_shape(a), results=list(results.values()))
    ratios = {}
    mat, chk = results.get("linear/materialized", {}), results.get("linear/chunked-torch", {})
    tri = results.get("linear/chunked-triton", {})
    for name, r in (("chunked_torch", chk), ("chunked_triton", tri)):
        if "ms" in r and "ms" in mat:
            ratios[f"{name}_time_vs_materialized"] = r["ms"] / mat["ms"]
            ratios[f"{name}_mem_vs_materialized"] = r["peak_mib"] / max(mat["peak_mib"], 1e-9)
    fused, ref = results.get("div/fused", {}), results.get("div/reference", {})
    if "ms" in fused and "ms" in ref:
        ratios["fused_speedup_vs_reference"] = ref["ms"] / fused["ms"]
    if device == "cuda" and "ms" in fused:
        bw = copy_bandwidth(a)
        moved = 7 * a.n * a.vocab * torch.finfo(DTYPES[a.dtype]).bits // 8  # 4 reads fwd, 2 reads + 1 write bwd
        ratios["copy_gbps"] = bw / 1e9
        ratios["fused_gbps"] = moved / (fused["ms"] / 1e3) / 1e9
        ratios["fused_bw_vs_copy"] = ratios["fused_gbps"] / ratios["copy_gbps"]
    report["ratios"] = ratios
    if a.sweep and device == "cuda":
        report["sweep"] = sweep(a)
    return report


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def print_table(report: dict) -> None:
    print(f"device: {report['device']}  shape: {report['shape']}")
    print(f"{'case':<24}{'ms':>12}{'peak extra MiB':>18}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['case']:<24}  error: {r['error']}")
        else:
            print(f"{r['case']:<24}{r['ms']:>12.1f}{r['peak_mib']:>18.1f}")
    for k, v in report["ratios"].items():
        print(f"{k:<36}{v:>10.3f}")
    for r in report.get("sweep", []):
        print(f"sweep block={r['block']:<6} warps={r['warps']:<3} {r['ms']:>10.2f} ms")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--sections", default=None, help="comma list of div, linear (default: linear on CPU, both on CUDA)")
    p.add_argument("--n", type=int, default=None, help="rows (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--vocab", type=int, default=None, help="default 49152 CPU, 128256 CUDA")
    p.add_argument("--hidden", type=int, default=None, help="default 576 CPU, 4096 CUDA")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default fp32 CPU, bf16 CUDA")
    p.add_argument("--divergence", default=None, help="default fkl CPU, jsd CUDA (Liger has JSD)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--teacher", default=None, choices=["logits", "hidden"], help="default logits CPU, hidden CUDA")
    p.add_argument("--chunk", type=int, default=None, help="rows per chunk (default: each path's own)")
    p.add_argument("--reps", type=int, default=None, help="timed steps per case (default 1 CPU, 10 CUDA)")
    p.add_argument("--sweep", action="store_true", help="CUDA: also time the fused kernels per block/warps")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cpu = a.device == "cpu"
    defaults = dict(n=2048 if cpu else 8192, vocab=49152 if cpu else 128256, hidden=576 if cpu else 4096,
                    dtype="fp32" if cpu else "bf16", teacher="logits" if cpu else "hidden", reps=1 if cpu else 10,
                    divergence="fkl" if cpu else "jsd")
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.sections = (a.sections or ("linear" if cpu else "div,linear")).split(",")
    return a


def main(argv=None) -> None:
    a = parse(argv)
    if a.child:
        print(json.dumps(measure(a.child, a, "cpu")))
        return
    report = run(a)
    print_table(report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
