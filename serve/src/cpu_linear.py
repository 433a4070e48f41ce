"""A bf16 linear for a few tokens at once, for CPUs without bf16 instructions (AVX2 only).

On such CPUs PyTorch's bf16 matmul is emulated: one token runs through a fast matrix-vector
path, but every further token costs about as much again (18 GFLOP/s whatever the batch), so
verifying a draft tree of 11 tokens cost 5.8 steps of one token (~1.3 on a CPU with bf16;
``bench/bench_verify_cost.py --dtype bf16``), and about 1.9 through this kernel. It keeps the
weights in bf16, widens each 8 of them to fp32 in registers (a 16-bit shift) and multiplies
them into up to 6 token rows at once with FMA, so the weights stream from memory once for all
tokens, as in the one-token path. It accumulates in fp32 and rounds the output to bf16, as
PyTorch's kernels do, so it differs from them only in the order of the sums.

It is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (gcc, ninja; about
half a minute, cached after that). Set ``SPECDISTILL_CPU_KERNELS=0`` to turn it off; if it
cannot be built, a warning says why and ``F.linear`` serves.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from specdistill.serve.packed_linear import PackedBf16Weight, PackedWeight, pack, packed_bf16_linear, packed_linear
from specdistill.serve.packed_linear import available as packed_available

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <cstring>
#include <vector>

static inline __m256 widen(const uint16_t* p) {  // 8 bf16 -> 8 fp32: the bits, shifted up
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

static inline float scalar(uint16_t w) {
  uint32_t bits = uint32_t(w) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline void store(float* y, float v) { *y = v; }

static inline uint16_t bf16_bits(float v) {  // v rounded to bf16, to nearest even as c10::BFloat16 does
  if (std::isnan(v)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return uint16_t((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

static inline void store(uint16_t* y, float v) { *y = bf16_bits(v); }

// Output rows n and n + 1 (w0, w1) for token rows m0 .. m0 + MB - 1, plus the bias (or none).
template <int MB, typename Out>
static void pair(const float* x, int64_t K, const uint16_t* w0, const uint16_t* w1, const float* bias, Out* y,
                 int64_t N, int64_t n, bool both) {
  __m256 a[MB], b[MB];
  for (int m = 0; m < MB; m++) { a[m] = _mm256_setzero_ps(); b[m] = _mm256_setzero_ps(); }
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 v0 = widen(w0 + k), v1 = widen(w1 + k);
    for (int m = 0; m < MB; m++) {
      __m256 xv = _mm256_loadu_ps(x + m * K + k);
      a[m] = _mm256_fmadd_ps(v0, xv, a[m]);
      b[m] = _mm256_fmadd_ps(v1, xv, b[m]);
    }
  }
  for (int m = 0; m < MB; m++) {
    float s0 = hsum(a[m]), s1 = hsum(b[m]);
    for (int64_t j = k; j < K; j++) { s0 += scalar(w0[j]) * x[m * K + j]; s1 += scalar(w1[j]) * x[m * K + j]; }
    if (bias) { s0 += bias[n]; s1 += both ? bias[n + 1] : 0.0f; }
    store(y + m * N + n, s0);
    if (both) store(y + m * N + n + 1, s1);
  }
}

// Output rows n .. n + 3 for MB token rows whose x is split into the even and odd elements of each 16
// (xe, xo [MB, K / 2]): 16 bf16 weights widen into two fp32 vectors with one shift and one mask, no
// shuffle, and 4 weight rows share each load of x. For 2-3 tokens (a short verification) this issues
// fewer instructions per weight than ``pair`` where 2 hyperthreads share one core's vector units.
template <int MB, typename Out>
static void quad(const float* xe, const float* xo, int64_t K, const uint16_t* w, const float* bias, Out* y,
                 int64_t N, int64_t n) {
  const int64_t K2 = K / 2;
  const __m256i high = _mm256_set1_epi32(0xFFFF0000);
  __m256 acc[4][MB];
  for (int r = 0; r < 4; r++) for (int m = 0; m < MB; m++) acc[r][m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m256 even[4], odd[4];
    for (int r = 0; r < 4; r++) {
      __m256i v = _mm256_loadu_si256((const __m256i*)(w + (n + r) * K + k));
      even[r] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      odd[r] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
    }
    for (int m = 0; m < MB; m++) {
      __m256 a = _mm256_loadu_ps(xe + m * K2 + k / 2), b = _mm256_loadu_ps(xo + m * K2 + k / 2);
      for (int r = 0; r < 4; r++) acc[r][m] = _mm256_fmadd_ps(odd[r], b, _mm256_fmadd_ps(even[r], a, acc[r][m]));
    }
  }
  for (int r = 0; r < 4; r++) {
    for (int m = 0; m < MB; m++) store(y + m * N + n + r, hsum(acc[r][m]) + (bias ? bias[n + r] : 0.0f));
  }
}

template <typename Out>
static void run_quads(const float* xp, const uint16_t* wp, const float* bias, Out* yp, int64_t M, int64_t K,
                      int64_t N) {
  const int64_t K2 = K / 2;
  std::vector<float> xe(M * K2), xo(M * K2);
  for (int64_t m = 0; m < M; m++) {
    for (int64_t k = 0; k < K; k += 16) {
      for (int j = 0; j < 8; j++) {
        xe[m * K2 + k / 2 + j] = xp[m * K + k + 2 * j];
        xo[m * K2 + k / 2 + j] = xp[m * K + k + 2 * j + 1];
      }
    }
  }
  at::parallel_for(0, N / 4, 8, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; q++) {
      if (M == 2) quad<2>(xe.data(), xo.data(), K, wp, bias, yp, N, 4 * q);
      else quad<3>(xe.data(), xo.data(), K, wp, bias, yp, N, 4 * q);
    }
  });
  for (int64_t n = N / 4 * 4; n < N; n += 2) {  // the last rows, 2 at a time
    const bool both = n + 1 < N;
    if (M == 2) pair<2>(xp, K, wp + n * K, wp + (both ? n + 1 : n) * K, bias, yp, N, n, both);
    else pair<3>(xp, K, wp + n * K, wp + (both ? n + 1 : n) * K, bias, yp, N, n, both);
  }
}

template <typename Out>
static void run(const float* xp, const uint16_t* wp, const float* bias, Out* yp, int64_t M, int64_t K, int64_t N) {
  if ((M == 2 || M == 3) && K % 16 == 0) return run_quads(xp, wp, bias, yp, M, K, N);
  at::parallel_for(0, (N + 1) / 2, 16, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; p++) {
      const int64_t n = 2 * p;
      const bool both = n + 1 < N;
      const uint16_t* w0 = wp + n * K;
      const uint16_t* w1 = both ? w0 + K : w0;
      for (int64_t m0 = 0; m0 < M; m0 += 6) {
        const float* xm = xp + m0 * K;
        Out* ym = yp + m0 * N;
        switch (std::min<int64_t>(6, M - m0)) {
          case 1: pair<1>(xm, K, w0, w1, bias, ym, N, n, both); break;
          case 2: pair<2>(xm, K, w0, w1, bias, ym, N, n, both); break;
          case 3: pair<3>(xm, K, w0, w1, bias, ym, N, n, both); break;
          case 4: pair<4>(xm, K, w0, w1, bias, ym, N, n, both); break;
          case 5: pair<5>(xm, K, w0, w1, bias, ym, N, n, both); break;
          default: pair<6>(xm, K, w0, w1, bias, ym, N, n, both); break;
        }
      }
    }
  });
}

// fp32 values of t (fp32 or bf16, contiguous): its own data, or bf16 widened into ``widened``.
static const float* as_floats(const torch::Tensor& t, std::vector<float>& widened) {
  if (t.scalar_type() == at::kFloat) return t.data_ptr<float>();
  const uint16_t* p = reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
  widened.resize(t.numel());
  for (size_t i = 0; i < widened.size(); i++) widened[i] = scalar(p[i]);
  return widened.data();
}

torch::Tensor linear_bf16(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  // x [M, K] fp32 or bf16, w [N, K] bf16, bias [N] or None, all contiguous -> [M, N] in x's dtype.
  // The conversions happen here rather than as tensor ops around the call (each a dispatch).
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  std::vector<float> xs, bs;
  const float* xp = as_floats(x, xs);
  const float* bp = bias.has_value() ? as_floats(*bias, bs) : nullptr;
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  auto y = torch::empty({M, N}, x.options());
  if (x.scalar_type() == at::kFloat) {
    run(xp, wp, bp, y.data_ptr<float>(), M, K, N);
  } else {
    run(xp, wp, bp, reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), M, K, N);
  }
  return y;
}
"""

_NAME = "specdistill_bf16_linear"
_kernel = None  # the compiled module, False once it failed or is turned off


def _load():
    global _kernel
    if _kernel is None:
        if os.environ.get("SPECDISTILL_CPU_KERNELS", "1") == "0":
            _kernel = False
            return _kernel
        try:
            from torch.utils.cpp_extension import load_inline

            _say_if_building()
            from specdistill.serve.cpu_layer_source import LAYER_SOURCE

            _kernel = load_inline(_NAME, cpp_sources=_SOURCE + LAYER_SOURCE,
                                  functions=["linear_bf16", "decode_layer_bf16", "eagle_layer_bf16"],
                                  extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])
        except Exception as err:  # no compiler, no ninja, not x86: PyTorch's own kernels serve
            log.warning("the bf16 CPU kernel could not be built (%s); multi-token bf16 steps use F.linear", err)
            _kernel = False
    return _kernel


def extension():
    """The built extension (``linear_bf16``, ``cpu_layer``'s ``decode_layer_bf16``); call after ``wanted``."""
    return _kernel


def wanted(weight: torch.Tensor) -> bool:
    """Whether multi-token linears over this weight should use the kernel: bf16 on an x86 CPU with
    AVX2 and FMA but without native bf16, and the kernel builds."""
    from specdistill.models.loading import native_bf16  # late: the serve layer loads models lazily

    if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or native_bf16(weight.device):
        return False
    return _builds()


def _builds() -> bool:
    """An x86 CPU with AVX2 and FMA on which the extension builds."""
    flags = _cpu_flags()
    return "avx2" in flags and "fma" in flags and bool(_load())


def builds_for(weight: torch.Tensor) -> bool:
    """Whether the extension serves this weight at all: bf16 on an x86 CPU with AVX2 and FMA where it
    builds, with or without bf16 instructions (``cpu_layer``'s one-call layers run on both kinds; the
    kernel alone is ``wanted`` only where bf16 is emulated)."""
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and _builds()


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for bf16 on a CPU without bf16 instructions, by the number of tokens: one through
    PyTorch's matrix-vector path (the fastest there), up to 64 through the kernel, more (a prefill)
    through an fp32 GEMM over the weights widened on the fly (MKL's fp32 runs ~5x the emulated bf16)."""
    tokens = x.numel() // x.shape[-1]
    if tokens == 1:
        return F.linear(x, weight, bias)
    if tokens > 64:
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    return linear(x, weight, bias)


# Up to this many tokens a bf16 step multiplies through the kernel; more go through packed fp32
# weights (``packed_linear``) where those exist (``python bench/bench_linears.py`` measures both).
KERNEL_MAX_TOKENS = 24


def bf16_packed_linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``bf16_linear`` with more than ``KERNEL_MAX_TOKENS`` tokens through the weight's packed fp32 copy."""
    if x.numel() // x.shape[-1] > KERNEL_MAX_TOKENS:
        return packed_linear(x, weight, bias)
    return bf16_linear(x, weight.weight, bias)


def linears_for(weight: torch.Tensor, packing: bool = True) -> tuple[Callable, Callable]:
    """How a model whose weights look like ``weight`` multiplies on this machine:
    ``(prepare, linear)``, where ``prepare(w)`` runs once per weight at load and
    ``linear(x, prepared, bias)`` on each call. fp32 on a CPU: oneDNN-packed weights. bf16 on a
    CPU without bf16 instructions: the kernel for a few tokens, packed fp32 copies for many; with
    them: weights packed for oneDNN's bf16 linear. Otherwise (GPUs, ``packing=False`` for
    ``torch.compile``): ``F.linear``."""
    from specdistill.models.loading import native_bf16  # late: the serve layer loads models lazily

    kernel = weight.dtype == torch.bfloat16 and wanted(weight)
    packs = packing and packed_available(weight)
    if packs and weight.dtype == torch.bfloat16 and native_bf16(weight.device):
        return PackedBf16Weight, packed_bf16_linear
    if packs and (weight.dtype == torch.float32 or kernel):
        return pack, bf16_packed_linear if kernel else packed_linear
    return _unchanged, bf16_linear if kernel else F.linear


def _unchanged(weight: torch.Tensor) -> torch.Tensor:
    return weight


class PreparedLinear(torch.nn.Module):
    """An ``nn.Linear`` that multiplies through ``linears_for``'s choice. ``weight`` and ``bias``
    stay the original parameters."""

    def __init__(self, linear: torch.nn.Linear, prepare: Callable, multiply: Callable):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.prepared, self.multiply = prepare(linear.weight), multiply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multiply(x, self.prepared, self.bias)


def with_kernel_linears(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` itself where ``F.linear`` is already the best this machine has; else a copy that
    shares its parameters and runs each ``nn.Linear`` through ``linears_for``'s choice (a draft
    head's levels feed a few tokens at once, as a verification does)."""
    linears = [name for name, child in module.named_modules() if isinstance(child, torch.nn.Linear)]
    if not linears:
        return module
    prepare, multiply = linears_for(module.get_submodule(linears[0]).weight)
    if multiply is F.linear:
        return module
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    copy_ = copy.deepcopy(module, memo=shared)
    for name in linears:
        parent, _, leaf = name.rpartition(".")
        owner = copy_.get_submodule(parent) if parent else copy_
        setattr(owner, leaf, PreparedLinear(getattr(owner, leaf), prepare, multiply))
    return copy_


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for bf16 ``x`` [..., K] and ``weight`` [N, K] through the kernel."""
    rows, bias = _kernel_dtype(x.reshape(-1, x.shape[-1])), None if bias is None else _kernel_dtype(bias)
    out = _kernel.linear_bf16(rows.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous())
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def _kernel_dtype(t: torch.Tensor) -> torch.Tensor:
    """The kernel reads fp32 or bf16; anything else goes in as fp32."""
    return t if t.dtype in (torch.float32, torch.bfloat16) else t.float()


def _say_if_building() -> None:
    """A note on stderr before the first build on this machine (it takes about half a minute)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        built = any(Path(_get_build_directory(_NAME, False)).glob("*.so"))
    except Exception:  # a private helper of torch's: if it moved, say nothing
        return
    if not built:
        print("specdistill: building the bf16 kernel for this CPU (once, about 30 s)", file=sys.stderr, flush=True)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
