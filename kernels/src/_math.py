"""Element-wise divergence math shared by the dense and the sparse-teacher kernels.

Everything takes log-probabilities already tempered (``lp = log p``,
``lq = log q``, fp32) and works on any block shape, scalars included. With
``g`` the derivative of the divergence D with respect to the student's
probabilities, the gradient with respect to the tempered student logits ``z``
is ``dD/dz_j = q_j * (g_j - sum_i q_i g_i)`` (softmax Jacobian); ``_row_terms``
returns the per-element pieces of D and of the row sum the gradient needs
(``aux``), ``_dz`` the gradient given that row sum:

    fkl  D = sum p (lp - lq)                      dD/dz = q - p
    rkl  D = sum q (lq - lp),  aux = D            dD/dz = q (lq - lp - aux)
    jsd  D = b KL(p||m) + (1-b) KL(q||m),  m = b p + (1-b) q
         aux = KL(q||m)                           dD/dz = (1-b) q (lq - lm - aux)
    tvd  D = 1/2 sum |p - q|,  aux = sum q sgn(q - p)
                                                  dD/dz = 1/2 q (sgn(q - p) - aux)
    skl  D = KL(p||m),  r = p / m,  aux = sum q r dD/dz = (1-b) q (aux - r)

``where`` guards implement 0 log 0 = 0 so that -inf logits give exact zeros.
"""

from __future__ import annotations

import os
import sys

import triton
import triton.language as tl


def is_interpreted(kernel) -> bool:
    """True when TRITON_INTERPRET=1 was set before the kernels were defined."""
    return not isinstance(kernel, triton.runtime.jit.JITFunction)


def _interpretable_stdlib() -> None:
    """With TRITON_INTERPRET=1 set after triton was first imported (transformers imports it
    while loading a model), triton's own @jit helpers (tl.sum, tl.zeros, ...) are compiled-mode
    objects that the interpreter refuses to call. Rewrap them as the decorator would have, so
    that "set TRITON_INTERPRET=1 before the kernels are first used" is enough."""
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("", "0", "false", "off"):
        return
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    wrapped: dict[int, InterpretedFunction] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("triton.language") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                # One wrapper per function: the interpreter compares combine_fns by identity.
                setattr(module, attr, wrapped.setdefault(id(value), InterpretedFunction(value.fn)))


_interpretable_stdlib()


@triton.jit
def _log_mix(lp, lq, log_beta, log_1mbeta):
    """log(b p + (1 - b) q) in log space; -inf when p = q = 0."""
    a = lp + log_beta
    c = lq + log_1mbeta
    hi = tl.maximum(a, c)
    lo = tl.minimum(a, c)
    # hi = -inf only when both are 0; lo - hi would be nan there.
    return tl.where(hi == float("-inf"), hi, hi + tl.log(1.0 + tl.exp(lo - hi)))


@triton.jit
def _row_terms(lp, lq, DIV: tl.constexpr, beta, log_beta, log_1mbeta):
    """Per-element (divergence term, aux term, min(p, q)); sum each over the row."""
    p = tl.exp(lp)
    q = tl.exp(lq)
    if DIV == 0:  # fkl
        term = tl.where(p > 0, p * (lp - lq), 0.0)
        aux = tl.zeros_like(term)
    elif DIV == 1:  # rkl
        term = tl.where(q > 0, q * (lq - lp), 0.0)
        aux = term
    elif DIV == 2:  # jsd
        lm = _log_mix(lp, lq, log_beta, log_1mbeta)
        kl_qm = tl.where(q > 0, q * (lq - lm), 0.0)
        term = beta * tl.where(p > 0, p * (lp - lm), 0.0) + (1.0 - beta) * kl_qm
        aux = kl_qm
    elif DIV == 3:  # tvd
        diff = q - p
        term = 0.5 * tl.abs(diff)
        aux = q * tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
    else:  # skl
        lm = _log_mix(lp, lq, log_beta, log_1mbeta)
        term = tl.where(p > 0, p * (lp - lm), 0.0)
        aux = q * tl.where(p > 0, tl.exp(lp - lm), 0.0)
    return term, aux, tl.minimum(p, q)


@triton.jit
def _dz(lp, lq, aux, DIV: tl.constexpr, beta, log_beta, log_1mbeta):
    """dD/dz (z = student logits / T) given the row's ``aux`` from ``_row_terms``."""
    p = tl.exp(lp)
    q = tl.exp(lq)
    if DIV == 0:  # fkl
        g = q - p
    elif DIV == 1:  # rkl
        g = tl.where(q > 0, q * (lq - lp - aux), 0.0)
    elif DIV == 2:  # jsd
        lm = _log_mix(lp, lq, log_beta, log_1mbeta)
        g = tl.where(q > 0, (1.0 - beta) * q * (lq - lm - aux), 0.0)
    elif DIV == 3:  # tvd
        diff = q - p
        g = 0.5 * q * (tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)) - aux)
    else:  # skl
        lm = _log_mix(lp, lq, log_beta, log_1mbeta)
        g = (1.0 - beta) * q * (aux - tl.where(p > 0, tl.exp(lp - lm), 0.0))
    return g


@triton.jit
def _online_lse(m, d, x):
    """One step of the streaming log-sum-exp: running max ``m`` and sum ``d`` of exp(x - m).

    ``m`` starts at -1e30, not -inf: a block of -inf entries then gives exp(0) = 1 as the
    rescale factor instead of exp(nan)."""
    m_new = tl.maximum(m, tl.max(x, 0))
    d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
    return m_new, d


@triton.jit
def _q_dd_dq(lp, lq, q, DIV: tl.constexpr, beta, log_beta, log_1mbeta):
    """``q * dD/dQ`` at (p, Q) for bucketed distributions, where ``lq`` may include the
    sparse teacher's tail smoothing and ``q`` is the bucket's unsmoothed mass (pass 1.0
    to get dD/dQ itself). The gradient w.r.t. z_j is then ``q_j (dD/dQ_b(j) - sum_b Q_b dD/dQ_b)``:

        fkl  dD/dQ = -p / Q        rkl  dD/dQ = log Q - log p + 1
        jsd  dD/dQ = (1-b)(log Q - log m)        tvd  dD/dQ = 1/2 sgn(Q - p)
        skl  dD/dQ = -(1-b) p / m
    """
    if DIV == 0:  # fkl
        g = tl.where(q > 0, -q * tl.exp(lp - lq), 0.0)
    elif DIV == 1:  # rkl
        g = tl.where(q > 0, q * (lq - lp + 1.0), 0.0)
    elif DIV == 2:  # jsd
        lm = _log_mix(lp, lq, log_beta, log_1mbeta)
        g = tl.where(q > 0, (1.0 - beta) * q * (lq - lm), 0.0)
    elif DIV == 3:  # tvd
        diff = tl.exp(lq) - tl.exp(lp)
        g = 0.5 * q * tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
    else:  # skl
        lm = _log_mix(lp, lq, log_beta, log_1mbeta)
        g = tl.where((q > 0) & (lp > float("-inf")), -(1.0 - beta) * q * tl.exp(lp - lm), 0.0)
    return g


@triton.jit
def _zero_row(g_row, V, BLOCK: tl.constexpr):
    """The gradient row of an ignored position: zeros over the whole vocabulary."""
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        tl.store(g_row + cols, tl.zeros([BLOCK], tl.float32), mask=cols < V)


@triton.jit
def _bwd_row_start(labels_ptr, stats_ptr, scale_ptr, g_row, row, V, ignore_index,
                   HAS_LABELS: tl.constexpr, BLOCK: tl.constexpr):
    """What every backward kernel reads first for its row: the label (-1 without labels), whether the row
    is ignored (its gradient row is then zeroed here and the kernel returns), the four fp32 stats its
    forward kept, and the row's scale (upstream gradient times d(reduction)/d(row loss))."""
    label = -1
    skip = False
    if HAS_LABELS:
        label = tl.load(labels_ptr + row).to(tl.int32)
        skip = label == ignore_index
        if skip:
            _zero_row(g_row, V, BLOCK)
    stat0 = tl.load(stats_ptr + row * 4 + 0)
    stat1 = tl.load(stats_ptr + row * 4 + 1)
    stat2 = tl.load(stats_ptr + row * 4 + 2)
    stat3 = tl.load(stats_ptr + row * 4 + 3)
    scale = tl.load(scale_ptr + row)
    return label, skip, stat0, stat1, stat2, stat3, scale

