"""The C++ source of ``cpu_layer``'s decoder layers, compiled into ``cpu_linear``'s extension after its
kernel (whose ``run``, ``scalar``, ``bf16_bits`` and ``as_floats`` it uses). A module of its own so that
``cpu_linear`` can build it without importing ``cpu_layer``, which imports ``cpu_linear``."""

LAYER_SOURCE = r"""
static inline float bf16_value(float v) { return scalar(bf16_bits(v)); }  // v rounded to bf16, as fp32

// The elementwise loops split across threads once a batch makes them long (16 rows: ~50k values a linear).
static const int64_t kGrain = 16384;

static void round_all(float* p, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) p[i] = bf16_value(p[i]);
  });
}

// As the eager path's rms_norm for bf16: normalize in fp32, round, scale by the bf16 weight, round.
static void rms_norm_rows(const float* x, const uint16_t* w, float* out, int64_t M, int64_t H, float eps) {
  for (int64_t m = 0; m < M; m++) {
    const float* row = x + m * H;
    float sum = 0.0f;
    for (int64_t i = 0; i < H; i++) sum += row[i] * row[i];
    const float scale = 1.0f / std::sqrt(sum / float(H) + eps);
    for (int64_t i = 0; i < H; i++) out[m * H + i] = bf16_value(scalar(w[i]) * bf16_value(row[i] * scale));
  }
}

// mkldnn::_linear_pointwise (the op PyTorch's compiler emits for packed weights), called through the dispatcher.
static torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& packed,
                                   const c10::optional<torch::Tensor>& bias_bf16) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack{x.to(at::kBFloat16), packed, bias_bf16.has_value() ? c10::IValue(*bias_bf16)
                                 : c10::IValue(), c10::IValue(std::string("none")),
                                 c10::IValue(c10::List<c10::optional<at::Scalar>>()), c10::IValue()};
  op.callBoxed(&stack);
  return stack[0].toTensor().to(at::kFloat);
}

// out [M, N] = round_bf16(x [M, K] @ w [N, K]^T + bias), x holding bf16 values in fp32: through oneDNN's bf16
// linear where w was packed for it (CPUs with bf16 instructions: ``packed_linear.pack_bf16``); else through
// the kernel above, or from ``aten_from`` rows on (CPUs with bf16 instructions: oneDNN's AMX or AVX512-BF16
// code wins past a few rows there, while its fixed cost per call loses to the kernel for one to three)
// through PyTorch's own bf16 linear, the op the eager path runs.
static torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, const float* bias,
                             const c10::optional<torch::Tensor>& bias_bf16, int64_t aten_from) {
  if (w.is_mkldnn()) return packed_linear(x, w, bias_bf16);
  if (x.size(0) >= aten_from) return at::linear(x.to(at::kBFloat16), w, bias_bf16).to(at::kFloat);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  run(x.data_ptr<float>(), reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), bias,
      y.data_ptr<float>(), M, K, N);
  round_all(y.data_ptr<float>(), M * N);
  return y;
}

// Rotary (HF's rotate_half form) on one head's D values, written to out.
static inline void rotate(const float* v, const float* c, const float* s, float* out, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; d++) out[d] = v[d] * c[d] + (-v[d + half]) * s[d];
  for (int64_t d = half; d < D; d++) out[d] = v[d] * c[d] + v[d - half] * s[d];
}

// Attention over the rows ``normed`` [B * T, K] (bf16 values in fp32): q/k/v, rotary, the new keys and
// values written at ``slots`` of the caches, SDPA, and the out projection. Returns [B * T, H]. The caches
// are fp32, or bf16 (CPUs with bf16 instructions: half the bytes read over a long context, and SDPA in
// bf16 there), where the rotated keys are rounded to bf16 as the eager path's bf16 cache does.
static torch::Tensor attention_rows(
    const torch::Tensor& normed, int64_t B, int64_t T, const torch::Tensor& qkv_w,
    const c10::optional<torch::Tensor>& qkv_bias, const torch::Tensor& out_w, const torch::Tensor& cos,
    const torch::Tensor& sin, torch::Tensor& keys, torch::Tensor& values, const torch::Tensor& slots,
    const c10::optional<torch::Tensor>& mask, int64_t span, bool causal, int64_t heads, int64_t kv_heads,
    int64_t aten_from) {
  const int64_t M = B * T, D = cos.size(2), S = keys.size(2), QD = heads * D, KD = kv_heads * D;
  std::vector<float> bias_values;
  const float* bias = qkv_bias.has_value() ? as_floats(qkv_bias->contiguous(), bias_values) : nullptr;
  auto qkv = project(normed, qkv_w, bias, qkv_bias, aten_from);  // [M, QD + 2 KD]
  const float* qkvp = qkv.data_ptr<float>();
  auto q = torch::empty({B, heads, T, D}, normed.options());
  float* qp = q.data_ptr<float>();
  const bool half = keys.scalar_type() == at::kBFloat16;
  float* kp = half ? nullptr : keys.data_ptr<float>();
  float* vp = half ? nullptr : values.data_ptr<float>();
  uint16_t* kh = half ? reinterpret_cast<uint16_t*>(keys.data_ptr<at::BFloat16>()) : nullptr;
  uint16_t* vh = half ? reinterpret_cast<uint16_t*>(values.data_ptr<at::BFloat16>()) : nullptr;
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  std::vector<float> key(D);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++) {
      const int64_t m = b * T + t;
      const float *row = qkvp + m * (QD + 2 * KD), *c = cp + m * D, *s = sp + m * D;
      for (int64_t h = 0; h < heads; h++) rotate(row + h * D, c, s, qp + ((b * heads + h) * T + t) * D, D);
      for (int64_t h = 0; h < kv_heads; h++) {
        const int64_t at = ((b * kv_heads + h) * S + slot[m]) * D;
        const float* value = row + QD + KD + h * D;
        if (!half) {
          rotate(row + QD + h * D, c, s, kp + at, D);
          std::memcpy(vp + at, value, D * sizeof(float));
          continue;
        }
        rotate(row + QD + h * D, c, s, key.data(), D);
        for (int64_t d = 0; d < D; d++) {
          kh[at + d] = bf16_bits(key[d]);
          vh[at + d] = bf16_bits(value[d]);  // a bf16 value already: exact
        }
      }
    }
  }
  const auto query = half ? q.to(at::kBFloat16) : q;
  const auto key_span = keys.narrow(2, 0, span), value_span = values.narrow(2, 0, span);
  const int64_t group = heads / kv_heads;
  at::Tensor attended;
  if (mask.has_value() && group > 1 && T > 1) {
    // The query heads of one kv head as one head of group * T rows (the mask repeated for each): SDPA then
    // reads each cached key and value once per kv head, not once per query head and block of queries.
    // 3 query heads per kv head, bf16, 2 cores, a layer: 1,500 cached tokens and 2 (5, 11, 24) new ones,
    // 158 (235, 383, 663) against 297 (332, 430, 690) us; one new token is faster as it was (118 against 146).
    auto grouped_mask = mask->repeat({1, 1, group, 1});
    attended = at::scaled_dot_product_attention(query.view({B, kv_heads, group * T, D}), key_span, value_span,
                                                grouped_mask, 0.0, false).view({B, heads, T, D});
  } else {
    attended = at::scaled_dot_product_attention(query, key_span, value_span, mask, 0.0, causal, c10::nullopt,
                                                heads != kv_heads);
  }
  // [B, heads, T, D] -> rows [M, heads * D], rounded to bf16 as the eager path's cast does.
  auto rows = attended.transpose(1, 2).reshape({M, QD}).to(at::kFloat).contiguous();
  round_all(rows.data_ptr<float>(), M * QD);
  return project(rows, out_w, nullptr, c10::nullopt, aten_from);
}

static void add_rows(float* x, const torch::Tensor& y, int64_t n) {  // x = round_bf16(x + y)
  const float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) x[i] = bf16_value(x[i] + yp[i]);
  });
}

// The MLP block on the rows x [M, H] in place: x = round(x + down(silu(gate) * up)) of the normed rows.
static void mlp_rows(float* x, int64_t M, int64_t H, const torch::Tensor& post_norm, const torch::Tensor& gate_up_w,
                     const torch::Tensor& down_w, float eps, const at::TensorOptions& f32, int64_t aten_from) {
  auto normed = torch::empty({M, H}, f32);
  rms_norm_rows(x, reinterpret_cast<const uint16_t*>(post_norm.data_ptr<at::BFloat16>()), normed.data_ptr<float>(),
                M, H, eps);
  auto gate_up = project(normed, gate_up_w, nullptr, c10::nullopt, aten_from);  // [M, 2 I]: gate then up
  const int64_t I = gate_up.size(1) / 2;
  auto act = torch::empty({M, I}, f32);
  const float* gp = gate_up.data_ptr<float>();
  float* ap = act.data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / I), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; m++) {
      for (int64_t i = 0; i < I; i++) {
        const float g = gp[m * 2 * I + i], u = gp[m * 2 * I + I + i];
        ap[m * I + i] = bf16_value(bf16_value(g / (1.0f + std::exp(-g))) * u);
      }
    }
  });
  add_rows(x, project(act, down_w, nullptr, c10::nullopt, aten_from), M * H);
}

torch::Tensor decode_layer_bf16(
    torch::Tensor x, torch::Tensor in_norm, torch::Tensor qkv_w, c10::optional<torch::Tensor> qkv_bias,
    torch::Tensor out_w, torch::Tensor post_norm, torch::Tensor gate_up_w, torch::Tensor down_w,
    torch::Tensor cos, torch::Tensor sin, torch::Tensor keys, torch::Tensor values, torch::Tensor slots,
    c10::optional<torch::Tensor> mask, int64_t span, bool causal, double eps, int64_t heads, int64_t kv_heads,
    int64_t aten_from) {
  // x [B, T, H] bf16; weights bf16 [N, K]; cos, sin [B, T, D] fp32; keys, values [B, KV, S, D] fp32 or bf16;
  // slots [B, T] int64: the cache slot each token's key and value go to.
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), M = B * T;
  auto f32 = x.options().dtype(at::kFloat);
  auto hidden = x.reshape({M, H}).to(at::kFloat);  // bf16 values, exactly
  float* hp = hidden.data_ptr<float>();
  auto normed = torch::empty({M, H}, f32);
  rms_norm_rows(hp, reinterpret_cast<const uint16_t*>(in_norm.data_ptr<at::BFloat16>()), normed.data_ptr<float>(),
                M, H, float(eps));
  add_rows(hp, attention_rows(normed, B, T, qkv_w, qkv_bias, out_w, cos, sin, keys, values, slots, mask, span,
                              causal, heads, kv_heads, aten_from), M * H);
  mlp_rows(hp, M, H, post_norm, gate_up_w, down_w, float(eps), f32, aten_from);
  return hidden.to(at::kBFloat16).reshape({B, T, H});
}

torch::Tensor eagle_layer_bf16(
    torch::Tensor embeds, torch::Tensor feature, torch::Tensor in_norm, torch::Tensor hidden_norm,
    torch::Tensor qkv_w, c10::optional<torch::Tensor> qkv_bias, torch::Tensor out_w, torch::Tensor post_norm,
    torch::Tensor gate_up_w, torch::Tensor down_w, torch::Tensor cos, torch::Tensor sin, torch::Tensor keys,
    torch::Tensor values, torch::Tensor slots, torch::Tensor mask, double eps, int64_t heads, int64_t kv_heads,
    bool norm_before_residual, int64_t aten_from) {
  // An EAGLE-3 head's layer: attention over [norm(embeds); norm(feature)] (both [B, T, H] bf16), the
  // residual on the feature (or on its norm); the rest as decode_layer_bf16.
  const int64_t B = embeds.size(0), T = embeds.size(1), H = embeds.size(2), M = B * T;
  auto f32 = embeds.options().dtype(at::kFloat);
  auto e = embeds.reshape({M, H}).to(at::kFloat), f = feature.reshape({M, H}).to(at::kFloat);
  auto normed = torch::empty({M, 2 * H}, f32), normed_feature = torch::empty({M, H}, f32);
  float* np = normed.data_ptr<float>();
  std::vector<float> half(M * H);
  rms_norm_rows(e.data_ptr<float>(), reinterpret_cast<const uint16_t*>(in_norm.data_ptr<at::BFloat16>()),
                half.data(), M, H, float(eps));
  rms_norm_rows(f.data_ptr<float>(), reinterpret_cast<const uint16_t*>(hidden_norm.data_ptr<at::BFloat16>()),
                normed_feature.data_ptr<float>(), M, H, float(eps));
  for (int64_t m = 0; m < M; m++) {
    std::memcpy(np + m * 2 * H, half.data() + m * H, H * sizeof(float));
    std::memcpy(np + m * 2 * H + H, normed_feature.data_ptr<float>() + m * H, H * sizeof(float));
  }
  auto x = norm_before_residual ? normed_feature : f;
  float* xp = x.data_ptr<float>();
  add_rows(xp, attention_rows(normed, B, T, qkv_w, qkv_bias, out_w, cos, sin, keys, values, slots, mask,
                              mask.size(-1), false, heads, kv_heads, aten_from), M * H);
  mlp_rows(xp, M, H, post_norm, gate_up_w, down_w, float(eps), f32, aten_from);
  return x.to(at::kBFloat16).reshape({B, T, H});
}
"""
