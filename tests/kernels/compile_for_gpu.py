"""Compile every kernel variant for an H100/H200 (sm_90) without a GPU.

Triton's interpreter runs the kernels' Python on CPU, which does not exercise
Triton's compiler: typing rules, loop-carried types, the early return, fp64
and the barrier are only checked when the kernels are lowered to PTX and
assembled. This script does that ahead of time (``triton.compile`` with a CUDA
target needs no driver), so a kernel that cannot compile fails on any machine.

    TRITON_INTERPRET=0 python tests/kernels/compile_for_gpu.py [--all]
"""

from __future__ import annotations

import itertools
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run with TRITON_INTERPRET=0: the interpreter replaces the kernels it has to compile")

import triton  # noqa: E402
from specdistill.kernels import fused_divergence as dense  # noqa: E402
from specdistill.kernels import sparse_teacher as sparse  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

FLOATS = {"inv_t", "t_sq", "beta", "log_beta", "log_1mbeta", "alpha", "soft_coef", "ce_coef", "tail_eps"}
INTS = {"V", "K", "ignore_index"}
STRIDES = {"stride_s", "stride_t", "stride_g"}
POINTERS_FP32 = {"loss_ptr", "acc_ptr", "stats_ptr", "scale_ptr", "lp_ptr"}


def _signature(kernel, logits_dtype: str) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in FLOATS:
            sig[name] = "fp32"
        elif name in INTS:
            sig[name] = "i32"
        elif name in STRIDES:
            sig[name] = "i64"
        elif name in POINTERS_FP32:
            sig[name] = "*fp32"
        elif name in ("labels_ptr", "idx_ptr"):
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = f"*{logits_dtype}"
        else:
            sig[name] = "constexpr"
    return sig


def variants(everything: bool):
    """(kernel, constexprs) pairs: every divergence with every feature on, plus the bare path."""
    flag_sets = [(True, True, True), (False, False, False)]
    if everything:
        flag_sets = list(itertools.product([False, True], repeat=3))
    for div, (labels, ce, raw) in itertools.product(range(5), flag_sets):
        if ce and not labels:
            continue  # CE needs labels; the wrappers never launch this combination
        if not everything and not labels and div != 0:
            continue
        base = dict(DIV=div, HAS_LABELS=labels, HAS_CE=ce, BLOCK=4096)
        yield dense._fwd_kernel, {**base, "RAW_LSE": raw}
        yield dense._bwd_kernel, base
        yield sparse._sparse_fwd_kernel, {**base, "RAW_LSE": raw, "BLOCK_K": 64}
        yield sparse._sparse_bwd_kernel, {**base, "BLOCK_K": 64}


def main(everything: bool = False) -> int:
    target = GPUTarget("cuda", 90, 32)
    count, start = 0, time.time()
    for kernel, constexprs in variants(everything):
        for dtype in ("bf16",) if not everything else ("bf16", "fp32"):
            constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
            src = ASTSource(kernel, _signature(kernel, dtype), constexprs=constexprs)
            triton.compile(src, target=target, options={"num_warps": 8})
            count += 1
    print(f"compiled {count} kernel variants for sm_90 in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main("--all" in sys.argv))
