// CPU kernels for decoding: NemotronH's one-token steps in C++ (fp32).
//
// A decode step streams every weight once for a few token vectors: products of a matrix by at
// most a few rows. Row-by-row dot products in wide vectors, several weight streams at once,
// read about 25-30 GB/s on one core here where MKL's kernels for these shapes read 15-20, and
// spread the rows over the threads themselves. Between the products each layer does small work
// (conv step, SSM update, gated norm; routing) that PyTorch spells as dozens of tiny ops, each
// costing more than its arithmetic once the weight stream has evicted the caches: here each
// mixer is one call.
//
// Semantics: the PyTorch functions of kernels/ and engine/model.py (the references the tests
// compare against); the same arithmetic, summed in a different order.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

namespace {

// 16 floats: one AVX-512 register, two AVX2 ones, four NEON ones (GCC vector extension).
typedef float vec16 __attribute__((vector_size(64)));
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec4 __attribute__((vector_size(16)));
constexpr int64_t V = 16;

inline vec16 load(const float* p) { vec16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vec16 v) { std::memcpy(p, &v, sizeof v); }
inline float hsum(vec16 v) {   // halves added as a tree
  vec8 lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const vec8 a = lo + hi;
  vec4 c, d;
  std::memcpy(&c, &a, sizeof c);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof c, sizeof d);
  const vec4 b = c + d;
  return (b[0] + b[2]) + (b[1] + b[3]);
}
inline float dot(const float* a, const float* b, int64_t n) {
  vec16 acc{};
  int64_t i = 0;
  for (; i + V <= n; i += V) acc += load(a + i) * load(b + i);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

// Threads are worth their fork/join (and, on a busy machine, the wait for a descheduled one)
// only for loops that move at least this many bytes; smaller ones run on the calling thread.
constexpr int64_t PARALLEL_BYTES = 256 << 10;
// at::parallel_for's grain for `n` jobs moving `bytes` in all: all of them in one chunk when small.
int64_t grain(int64_t n, int64_t bytes) { return bytes < PARALLEL_BYTES ? std::max<int64_t>(n, 1) : 1; }

void check(bool ok, const char* what) { TORCH_CHECK(ok, "omnistream cpu kernels: ", what); }
void check_f32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "omnistream cpu kernels: ", name, " must be a contiguous fp32 CPU tensor");
}
const float* opt_ptr(const std::optional<at::Tensor>& t) { return t ? t->const_data_ptr<float>() : nullptr; }

// ---- products of a weight matrix with a few rows ------------------------------------------
enum Act { NONE = 0, RELU2 = 1 };   // what is applied to each output: nothing, or relu(.)^2

// y[b, o] = act(sum_i x[b, i] W[o, i] + bias[o]) for the rows o in [o0, o1), B rows of x. The
// rows are read as S streams at once (S runs of consecutive rows, interleaved): one stream
// leaves the memory system idle between its misses, S of them keep S times more reads in flight
// (measured 10-15% faster than one stream, for every shape here).
template <int B, int S>
void dot_rows(const float* W, int64_t I, const float* x, int64_t ldx, const float* bias, int act,
              float* y, int64_t ldy, int64_t o0, int64_t o1) {
  const int64_t I16 = I - I % V, run = (o1 - o0) / S;
  auto finish = [&](vec16 acc, int b, int64_t o) {
    float s = hsum(acc);
    for (int64_t i = I16; i < I; ++i) s += W[o * I + i] * x[b * ldx + i];
    if (bias) s += bias[o];
    if (act == RELU2) s = s > 0.0f ? s * s : 0.0f;
    y[b * ldy + o] = s;
  };
  for (int64_t j = 0; j < run; ++j) {
    vec16 acc[S][B];
    for (int t = 0; t < S; ++t)
      for (int b = 0; b < B; ++b) acc[t][b] = vec16{};
    for (int64_t i = 0; i < I16; i += V) {
      for (int t = 0; t < S; ++t) {
        vec16 wv = load(W + (o0 + t * run + j) * I + i);
        for (int b = 0; b < B; ++b) acc[t][b] += wv * load(x + b * ldx + i);
      }
    }
    for (int t = 0; t < S; ++t)
      for (int b = 0; b < B; ++b) finish(acc[t][b], b, o0 + t * run + j);
  }
  for (int64_t o = o0 + S * run; o < o1; ++o) {   // the rows left over
    vec16 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = vec16{};
    for (int64_t i = 0; i < I16; i += V) {
      vec16 wv = load(W + o * I + i);
      for (int b = 0; b < B; ++b) acc[b] += wv * load(x + b * ldx + i);
    }
    for (int b = 0; b < B; ++b) finish(acc[b], b, o);
  }
}

// One product: y (B, O) = act(x (B, I) W^T + bias), rows of x and y `ldx` / `ldy` apart.
struct Product {
  const float* W; int64_t O, I;
  const float* x; int64_t ldx, B;
  const float* bias; int act;
  float* y; int64_t ldy;
};

// Rows of x taken at once, and streams of dot_rows for B of them: the S x B accumulators stay in
// registers (32 AVX-512 registers hold 16 of them; with AVX2 or NEON one takes 2 or 4 registers).
#if defined(__AVX512F__)
constexpr int ACCUMULATORS = 16, ROWS = 8;
#else
constexpr int ACCUMULATORS = 4, ROWS = 4;
#endif
constexpr int streams(int B) { return std::max(1, std::min(4, ACCUMULATORS / B)); }

// The rows [o0, o1) of a product, for any number of x rows: up to ROWS at a time; beyond that,
// W's rows in blocks that stay in cache while each group of ROWS reads them.
void product_rows(const Product& p, int64_t o0, int64_t o1) {
  const int64_t block = p.B <= ROWS ? o1 - o0 : 32;
  for (int64_t ob = o0; ob < o1; ob += block) {
    int64_t oe = std::min(o1, ob + block);
    for (int64_t b0 = 0; b0 < p.B; b0 += ROWS) {
      const float* x = p.x + b0 * p.ldx;
      float* y = p.y + b0 * p.ldy;
      switch (std::min<int64_t>(ROWS, p.B - b0)) {
        case 1: dot_rows<1, streams(1)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
        case 2: dot_rows<2, streams(2)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
        case 3: dot_rows<3, streams(3)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
        case 4: dot_rows<4, streams(4)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
        case 5: dot_rows<5, streams(5)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
        case 6: dot_rows<6, streams(6)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
        case 7: dot_rows<7, streams(7)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
        default: dot_rows<8, streams(8)>(p.W, p.I, x, p.ldx, p.bias, p.act, y, p.ldy, ob, oe); break;
      }
    }
  }
}

// Several products as one parallel loop (one fork/join for all): their rows cut into pieces,
// the pieces spread over the threads. Pieces of up to 1 MB of weights (long runs keep the S
// streams of dot_rows far apart: measured faster than 64-256 KB), smaller only to give each
// thread two of them.
void run_products(const std::vector<Product>& ps) {
  int64_t total = 0;
  for (const Product& p : ps) total += p.O * p.I * 4;
  const int64_t chunk = std::clamp<int64_t>(total / (2 * at::get_num_threads()), 64 << 10, 1 << 20);
  struct Piece { int64_t p, o0, o1; };
  std::vector<Piece> pieces;
  for (int64_t k = 0; k < (int64_t)ps.size(); ++k) {
    const Product& p = ps[k];
    const int64_t rows = std::max<int64_t>(1, chunk / std::max<int64_t>(1, p.I * 4));
    for (int64_t o = 0; o < p.O; o += rows) pieces.push_back({k, o, std::min(p.O, o + rows)});
  }
  at::parallel_for(0, (int64_t)pieces.size(), grain(pieces.size(), total), [&](int64_t a, int64_t b) {
    for (int64_t k = a; k < b; ++k) product_rows(ps[pieces[k].p], pieces[k].o0, pieces[k].o1);
  });
}

// The rows of x (..., I) as a matrix with unit column stride (a copy only if they are not).
at::Tensor as_rows(const at::Tensor& x, int64_t I) {
  check(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 1 && x.size(-1) == I,
        "x must be fp32 on the CPU with as many features as the weight's columns");
  at::Tensor x2 = x.reshape({-1, I});
  return x2.stride(1) != 1 || (x2.size(0) > 1 && x2.stride(0) < I) ? x2.contiguous() : x2;
}

// The product of rows x2 (B, I) with W (and bias, act) into a new (..., O) shaped like x.
Product product(const at::Tensor& x, const at::Tensor& x2, const at::Tensor& W, const std::optional<at::Tensor>& bias,
                int64_t act, at::Tensor& y) {
  check_f32(W, "weight");
  check(W.dim() == 2 && W.size(1) == x2.size(1), "weight must be (out, in)");
  const int64_t O = W.size(0);
  if (bias) { check_f32(*bias, "bias"); check(bias->numel() == O, "bias size"); }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = O;
  y = at::empty(shape, x.options());
  return {W.const_data_ptr<float>(), O, W.size(1), x2.const_data_ptr<float>(), x2.stride(0), x2.size(0),
          opt_ptr(bias), (int)act, y.mutable_data_ptr<float>(), O};
}

// x (..., I) W^T (+ bias), act applied: kernels.linear.linear for a few rows.
at::Tensor linear(const at::Tensor& x, const at::Tensor& W, const std::optional<at::Tensor>& bias, int64_t act) {
  at::Tensor x2 = as_rows(x, W.size(-1)), y;
  run_products({product(x, x2, W, bias, act, y)});
  return y;
}

// Several products of the same x (q, k and v; a router and a shared expert) in one parallel loop.
std::vector<at::Tensor> linears(const at::Tensor& x, at::TensorList weights, const std::vector<std::optional<at::Tensor>>& biases,
                                at::IntArrayRef acts) {
  check(weights.size() == biases.size() && weights.size() == acts.size() && !weights.empty(), "linears lists");
  at::Tensor x2 = as_rows(x, weights[0].size(-1));
  std::vector<at::Tensor> ys(weights.size());
  std::vector<Product> ps;
  for (size_t k = 0; k < weights.size(); ++k) ps.push_back(product(x, x2, weights[k], biases[k], acts[k], ys[k]));
  run_products(ps);
  return ys;
}

// ---- norms --------------------------------------------------------------------------------
// (x + residual, RMSNorm(x + residual) * weight) over the last axis; residual optional.
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                                const at::Tensor& weight, double eps) {
  check_f32(weight, "norm weight");
  const int64_t H = weight.numel();
  check(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.size(-1) == H, "x must be fp32 (..., hidden)");
  at::Tensor h = x.contiguous();
  if (residual) {
    check(residual->scalar_type() == at::kFloat && residual->numel() == x.numel(), "residual must match x");
    const at::Tensor r = residual->contiguous();
    at::Tensor sum = at::empty_like(h);
    const float *a = h.const_data_ptr<float>(), *b = r.const_data_ptr<float>();
    float* o = sum.mutable_data_ptr<float>();
    for (int64_t i = 0; i < h.numel(); ++i) o[i] = a[i] + b[i];
    h = sum;
  }
  at::Tensor out = at::empty_like(h);
  const int64_t rows = h.numel() / std::max<int64_t>(1, H);
  const float* hp = h.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* v = hp + r * H;
    const float scale = 1.0f / std::sqrt(dot(v, v, H) / H + (float)eps);
    for (int64_t i = 0; i < H; ++i) op[r * H + i] = w[i] * (v[i] * scale);
  }
  return {h, out};
}

// ---- Mamba2: one token per row ------------------------------------------------------------
// From the in_proj output (b, z | xBC | dt) to the gated, normed y (b, d_inner) that out_proj
// reads; conv_state (b, conv_dim, K-1) and ssm_state (b, h, p, n) are updated in place. As
// engine/model.py's Mamba2Mixer at T = 1: causal_conv1d, softplus(dt + dt_bias) clamped,
// ssd_step, gated_rms_norm.
at::Tensor mamba_core(const at::Tensor& zxbcdt, const at::Tensor& conv_state, const at::Tensor& ssm_state,
                      const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
                      const at::Tensor& dt_bias, const at::Tensor& A_log, const at::Tensor& D,
                      const at::Tensor& norm_weight, int64_t n_groups, double eps, double dt_min, double dt_max) {
  for (auto* t : {&zxbcdt, &conv_state, &ssm_state, &conv_weight, &dt_bias, &A_log, &D, &norm_weight})
    check_f32(*t, "mamba_step inputs");
  if (conv_bias) check_f32(*conv_bias, "conv bias");
  check(ssm_state.dim() == 4 && conv_state.dim() == 3 && zxbcdt.dim() == 2, "mamba_step shapes");
  const int64_t b = ssm_state.size(0), h = ssm_state.size(1), p = ssm_state.size(2), n = ssm_state.size(3);
  const int64_t g = n_groups, d_inner = h * p, c = d_inner + 2 * g * n, K1 = conv_state.size(2), K = K1 + 1;
  check(g > 0 && h % g == 0, "heads must divide into groups");
  check(zxbcdt.size(0) == b && zxbcdt.size(1) == d_inner + c + h, "in_proj output size");
  check(conv_state.size(0) == b && conv_state.size(1) == c && conv_weight.numel() == c * K, "conv sizes");
  check(dt_bias.numel() == h && A_log.numel() == h && D.numel() == h && norm_weight.numel() == d_inner, "head sizes");

  at::Tensor y = at::empty({b, d_inner}, zxbcdt.options());
  at::Tensor xbc = at::empty({b, c}, zxbcdt.options());     // conv outputs: x, B, C
  at::Tensor dts = at::empty({b, 2, h}, zxbcdt.options());  // dt and exp(dt * A) per head
  const float* in = zxbcdt.const_data_ptr<float>();
  float* cs = conv_state.mutable_data_ptr<float>();
  float* ss = ssm_state.mutable_data_ptr<float>();
  const float* cw = conv_weight.const_data_ptr<float>();
  const float* cb = opt_ptr(conv_bias);
  const float *dtb = dt_bias.const_data_ptr<float>(), *alog = A_log.const_data_ptr<float>();
  const float *Dp = D.const_data_ptr<float>(), *nw = norm_weight.const_data_ptr<float>();
  float *u = xbc.mutable_data_ptr<float>(), *dd = dts.mutable_data_ptr<float>(), *yp = y.mutable_data_ptr<float>();
  const int64_t row = d_inner + c + h;

  // causal conv over the window (state, new input), then SiLU; the window slides by one
  for (int64_t r = 0; r < b; ++r) {
    const float* xin = in + r * row + d_inner;
    for (int64_t ch = 0; ch < c; ++ch) {
      float* st = cs + (r * c + ch) * K1;
      const float* w = cw + ch * K;
      float acc = 0.0f;
      for (int64_t k = 0; k < K1; ++k) acc += st[k] * w[k];
      acc += xin[ch] * w[K1];
      if (cb) acc += cb[ch];
      for (int64_t k = 0; k + 1 < K1; ++k) st[k] = st[k + 1];
      if (K1) st[K1 - 1] = xin[ch];
      u[r * c + ch] = silu(acc);
    }
    const float* dtin = in + r * row + d_inner + c;
    for (int64_t hd = 0; hd < h; ++hd) {
      const float v = dtin[hd] + dtb[hd];
      float dt = v > 20.0f ? v : std::log1p(std::exp(v));           // softplus, threshold 20
      dt = std::min(std::max(dt, (float)dt_min), (float)dt_max);
      dd[(r * 2) * h + hd] = dt;
      dd[(r * 2 + 1) * h + hd] = std::exp(dt * -std::exp(alog[hd]));
    }
  }
  // per (row, group): the SSM update and read-out of its heads, then the gated group norm
  const int64_t hg = h / g, n16 = n - n % V, gs = hg * p;
  at::parallel_for(0, b * g, grain(b * g, ssm_state.numel() * 8), [&](int64_t a, int64_t e) {
    for (int64_t job = a; job < e; ++job) {
      const int64_t r = job / g, gi = job % g;
      const float* x = u + r * c;
      const float* Bv = x + d_inner + gi * n;
      const float* Cv = x + d_inner + g * n + gi * n;
      const float* z = in + r * row;
      float* yr = yp + r * d_inner;
      float sumsq = 0.0f;
      for (int64_t hd = gi * hg; hd < (gi + 1) * hg; ++hd) {
        const float dt = dd[(r * 2) * h + hd], dA = dd[(r * 2 + 1) * h + hd];
        const vec16 dAv = vec16{} + dA;
        for (int64_t pi = 0; pi < p; ++pi) {
          const int64_t ch = hd * p + pi;
          const float dtx = dt * x[ch];
          const vec16 dtxv = vec16{} + dtx;
          float* s = ss + ((r * h + hd) * p + pi) * n;
          vec16 acc{};
          for (int64_t k = 0; k < n16; k += V) {
            vec16 sv = load(s + k) * dAv + dtxv * load(Bv + k);
            store(s + k, sv);
            acc += sv * load(Cv + k);
          }
          float out = hsum(acc);
          for (int64_t k = n16; k < n; ++k) {
            s[k] = s[k] * dA + dtx * Bv[k];
            out += s[k] * Cv[k];
          }
          out = (out + Dp[hd] * x[ch]) * silu(z[ch]);
          yr[ch] = out;
          sumsq += out * out;
        }
      }
      const float scale = 1.0f / std::sqrt(sumsq / gs + (float)eps);
      for (int64_t ch = gi * gs; ch < (gi + 1) * gs; ++ch) yr[ch] = nw[ch] * (yr[ch] * scale);
    }
  });
  return y;
}

// The whole mixer for normed x (b, H): in_proj, the step above, out_proj.
at::Tensor mamba_step(const at::Tensor& x, const at::Tensor& in_weight, const std::optional<at::Tensor>& in_bias,
                      const at::Tensor& conv_state, const at::Tensor& ssm_state, const at::Tensor& conv_weight,
                      const std::optional<at::Tensor>& conv_bias, const at::Tensor& dt_bias, const at::Tensor& A_log,
                      const at::Tensor& D, const at::Tensor& norm_weight, const at::Tensor& out_weight,
                      const std::optional<at::Tensor>& out_bias, int64_t n_groups, double eps, double dt_min,
                      double dt_max) {
  at::Tensor y = mamba_core(linear(x, in_weight, in_bias, NONE), conv_state, ssm_state, conv_weight, conv_bias, dt_bias,
                            A_log, D, norm_weight, n_groups, eps, dt_min, dt_max);
  return linear(y, out_weight, out_bias, NONE);
}

// ---- MoE ----------------------------------------------------------------------------------
struct Router {
  int64_t E, top_k, n_group, topk_group;
  bool norm_topk_prob;
  double scaling;
};

void check_router(const Router& r, const at::Tensor& correction_bias) {
  check_f32(correction_bias, "correction bias");
  check(correction_bias.numel() == r.E && r.top_k >= 1 && r.top_k <= r.E && r.n_group >= 1 && r.E % r.n_group == 0 &&
        r.topk_group >= 1 && r.topk_group <= r.n_group, "router sizes");
}

// kernels.moe.route for N rows of fp32 logits (N, E): experts chosen by sigmoid(logits) + bias
// (within the best topk_group of n_group groups, a group scored by its two best), best first,
// weighted by the uncorrected sigmoid (normalized, scaled).
void route_rows(const Router& R, const float* lg, const float* bias, int64_t N, int64_t* ids, float* weights) {
  const int64_t E = R.E, k = R.top_k;
  std::vector<float> scores(E), choice(E), gscore(R.n_group);
  std::vector<int64_t> order(std::max(E, R.n_group));
  std::vector<char> keep(R.n_group);
  const float ninf = -std::numeric_limits<float>::infinity();
  auto best_first = [](const std::vector<float>& v) {      // ties to the lower index
    return [&v](int64_t a, int64_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  };
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t e = 0; e < E; ++e) {
      scores[e] = 1.0f / (1.0f + std::exp(-lg[t * E + e]));
      choice[e] = scores[e] + bias[e];
    }
    if (R.n_group > 1) {
      const int64_t per = E / R.n_group;
      for (int64_t gi = 0; gi < R.n_group; ++gi) {
        float a = ninf, b2 = ninf;                       // the group's two best
        for (int64_t e = gi * per; e < (gi + 1) * per; ++e) {
          if (choice[e] > a) { b2 = a; a = choice[e]; } else if (choice[e] > b2) b2 = choice[e];
        }
        gscore[gi] = per > 1 ? a + b2 : a;
      }
      std::iota(order.begin(), order.begin() + R.n_group, 0);
      std::partial_sort(order.begin(), order.begin() + R.topk_group, order.begin() + R.n_group, best_first(gscore));
      std::fill(keep.begin(), keep.end(), 0);
      for (int64_t j = 0; j < R.topk_group; ++j) keep[order[j]] = 1;
      for (int64_t e = 0; e < E; ++e) if (!keep[e / per]) choice[e] = ninf;
    }
    std::iota(order.begin(), order.begin() + E, 0);
    std::partial_sort(order.begin(), order.begin() + k, order.begin() + E, best_first(choice));
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += scores[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      float w = scores[order[j]];
      if (R.norm_topk_prob) w = w / (sum + 1e-20f);
      ids[t * k + j] = order[j];
      weights[t * k + j] = w * (float)R.scaling;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> route(const at::Tensor& logits, const at::Tensor& correction_bias, int64_t top_k,
                                         int64_t n_group, int64_t topk_group, bool norm_topk_prob, double scaling) {
  check_f32(logits, "router logits");
  check(logits.dim() == 2, "router logits must be (N, E)");
  const Router R{logits.size(1), top_k, n_group, topk_group, norm_topk_prob, scaling};
  check_router(R, correction_bias);
  at::Tensor ids = at::empty({logits.size(0), top_k}, logits.options().dtype(at::kLong));
  at::Tensor weights = at::empty({logits.size(0), top_k}, logits.options());
  route_rows(R, logits.const_data_ptr<float>(), correction_bias.const_data_ptr<float>(), logits.size(0),
             ids.mutable_data_ptr<int64_t>(), weights.mutable_data_ptr<float>());
  return {ids, weights};
}

void check_experts(at::TensorList up, at::TensorList down, int64_t d) {
  check(!up.empty() && down.size() == up.size(), "expert lists");
  for (size_t e = 0; e < up.size(); ++e) {
    check_f32(up[e], "expert weights");
    check_f32(down[e], "expert weights");
    check(up[e].dim() == 2 && up[e].size(0) == up[0].size(0) && up[e].size(1) == d && down[e].dim() == 2 &&
          down[e].size(0) == d && down[e].size(1) == up[0].size(0), "expert weight shapes");
  }
}

// sum_k w_k * down_e(relu(up_e(x))^2) over each token's experts e = ids[:, k]: every hit expert
// reads its weights once for all its tokens, and `extra_up` / `extra_down` products (a shared
// expert's) join the up and the down loops. Contributions are added in expert order.
struct Experts {
  int64_t N, d, k, inner;
  std::vector<int64_t> pairs;   // token * k + j, sorted by expert (stable: tokens in order)
  at::Tensor xs, hs, ys;        // per pair: input row, relu(up x)^2, down of that

  Experts(const at::Tensor& x, const int64_t* ids, int64_t k_, at::TensorList up)
      : N(x.size(0)), d(x.size(1)), k(k_), inner(up[0].size(0)), pairs(N * k_) {
    const int64_t E = up.size();
    for (int64_t q = 0; q < N * k; ++q) check(ids[q] >= 0 && ids[q] < E, "expert id out of range");
    std::iota(pairs.begin(), pairs.end(), 0);
    std::stable_sort(pairs.begin(), pairs.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    xs = at::empty({N * k, d}, x.options());
    hs = at::empty({N * k, inner}, x.options());
    ys = at::empty({N * k, d}, x.options());
    const float* xp = x.const_data_ptr<float>();
    for (int64_t q = 0; q < N * k; ++q)
      std::memcpy(xs.mutable_data_ptr<float>() + q * d, xp + (pairs[q] / k) * d, d * sizeof(float));
  }

  void run(const int64_t* ids, at::TensorList up, at::TensorList down, std::vector<Product> extra_up = {},
           std::vector<Product> extra_down = {}) {
    float *xsp = xs.mutable_data_ptr<float>(), *hsp = hs.mutable_data_ptr<float>(), *ysp = ys.mutable_data_ptr<float>();
    std::vector<Product>& ups = extra_up;
    std::vector<Product>& downs = extra_down;
    for (int64_t q0 = 0; q0 < N * k;) {
      int64_t q1 = q0;
      const int64_t e = ids[pairs[q0]];
      while (q1 < N * k && ids[pairs[q1]] == e) ++q1;
      ups.push_back({up[e].const_data_ptr<float>(), inner, d, xsp + q0 * d, d, q1 - q0, nullptr, RELU2,
                     hsp + q0 * inner, inner});
      downs.push_back({down[e].const_data_ptr<float>(), d, inner, hsp + q0 * inner, inner, q1 - q0, nullptr, NONE,
                       ysp + q0 * d, d});
      q0 = q1;
    }
    run_products(ups);
    run_products(downs);
  }

  at::Tensor sum(const float* weights) const {
    at::Tensor out = at::zeros({N, d}, xs.options());
    float* op = out.mutable_data_ptr<float>();
    const float* ysp = ys.const_data_ptr<float>();
    for (int64_t q = 0; q < N * k; ++q) {
      const int64_t t = pairs[q] / k;
      const float w = weights[pairs[q]];
      for (int64_t i = 0; i < d; ++i) op[t * d + i] += ysp[q * d + i] * w;
    }
    return out;
  }
};

// kernels.moe.grouped_experts: x (N, d), ids / weights (N, k) -> (N, d) fp32.
at::Tensor grouped_experts(const at::Tensor& x, const at::Tensor& ids, const at::Tensor& weights,
                           at::TensorList up, at::TensorList down) {
  check_f32(x, "expert input");
  check(x.dim() == 2 && ids.dim() == 2 && ids.scalar_type() == at::kLong && ids.is_contiguous() &&
        weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.sizes() == ids.sizes() &&
        ids.size(0) == x.size(0), "expert routing shapes");
  check_experts(up, down, x.size(1));
  Experts ex(x, ids.const_data_ptr<int64_t>(), ids.size(1), up);
  ex.run(ids.const_data_ptr<int64_t>(), up, down);
  return ex.sum(weights.const_data_ptr<float>());
}

// engine/model.py's MoE (without a latent projection) for a few tokens x (N, H): the router and
// the shared expert's up product in one loop, routing, the chosen experts' up products and the
// shared expert's down product in a second, the experts' down products in a third;
// routed sum + shared expert.
at::Tensor moe_step(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& correction_bias,
                    at::TensorList up, at::TensorList down, const at::Tensor& shared_up,
                    const std::optional<at::Tensor>& shared_up_bias, const at::Tensor& shared_down,
                    const std::optional<at::Tensor>& shared_down_bias, int64_t top_k, int64_t n_group,
                    int64_t topk_group, bool norm_topk_prob, double scaling) {
  check_f32(x, "MoE input");
  check(x.dim() == 2, "MoE input must be (N, H)");
  const int64_t N = x.size(0);
  const Router R{gate_weight.size(0), top_k, n_group, topk_group, norm_topk_prob, scaling};
  check_router(R, correction_bias);
  check_experts(up, down, x.size(1));
  at::Tensor logits, hs;
  run_products({product(x, x, gate_weight, std::nullopt, NONE, logits), product(x, x, shared_up, shared_up_bias, RELU2, hs)});
  std::vector<int64_t> ids(N * top_k);
  std::vector<float> weights(N * top_k);
  route_rows(R, logits.const_data_ptr<float>(), correction_bias.const_data_ptr<float>(), N, ids.data(), weights.data());
  Experts ex(x, ids.data(), top_k, up);
  at::Tensor shared;
  ex.run(ids.data(), up, down, {}, {product(hs, hs, shared_down, shared_down_bias, NONE, shared)});
  at::Tensor out = ex.sum(weights.data());
  return out.add_(shared);
}

// ---- attention ----------------------------------------------------------------------------
// kernels.attention.causal_attention at one query per row: q (b, H, 1, D) over keys / values
// (b, Hkv, >= max(lengths), D; the cache's views, rows D floats apart), row r seeing its first
// lengths[r] positions; the H / Hkv query heads of a KV head read its keys once. Scale D ** -0.5.
// With new_k / new_v (b, Hkv, D) the row's own key and value are first written into the cache,
// at position lengths[r] - 1 (Attention.forward's cache update).
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            at::IntArrayRef lengths, const std::optional<at::Tensor>& new_k,
                            const std::optional<at::Tensor>& new_v) {
  check(q.device().is_cpu() && q.scalar_type() == at::kFloat && keys.scalar_type() == at::kFloat &&
        values.scalar_type() == at::kFloat && q.dim() == 4 && keys.dim() == 4 && values.dim() == 4, "attention inputs");
  const int64_t b = q.size(0), H = q.size(1), D = q.size(3), Hkv = keys.size(1);
  check(q.size(2) == 1 && keys.size(0) == b && values.sizes() == keys.sizes() && keys.size(3) == D && H % Hkv == 0 &&
        (int64_t)lengths.size() == b && keys.stride(3) == 1 && values.stride(3) == 1, "attention shapes");
  for (int64_t L : lengths) check(L >= 1 && L <= keys.size(2), "attention length out of range");
  check(new_k.has_value() == new_v.has_value(), "new key and value go together");
  if (new_k) {
    check(new_k->numel() == b * Hkv * D && new_v->numel() == b * Hkv * D && new_k->scalar_type() == at::kFloat &&
          new_v->scalar_type() == at::kFloat, "new key / value shapes");
    at::Tensor k = new_k->contiguous(), v = new_v->contiguous();
    float *K = keys.mutable_data_ptr<float>(), *Vv = values.mutable_data_ptr<float>();
    for (int64_t r = 0; r < b; ++r)
      for (int64_t j = 0; j < Hkv; ++j) {
        const int64_t at_k = r * keys.stride(0) + j * keys.stride(1) + (lengths[r] - 1) * keys.stride(2);
        const int64_t at_v = r * values.stride(0) + j * values.stride(1) + (lengths[r] - 1) * values.stride(2);
        std::memcpy(K + at_k, k.const_data_ptr<float>() + (r * Hkv + j) * D, D * sizeof(float));
        std::memcpy(Vv + at_v, v.const_data_ptr<float>() + (r * Hkv + j) * D, D * sizeof(float));
      }
  }
  at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty({b, H, 1, D}, q.options());
  const float *qp = qc.const_data_ptr<float>(), *kp = keys.const_data_ptr<float>(), *vp = values.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const int64_t r = H / Hkv, ks0 = keys.stride(0), ks1 = keys.stride(1), ks2 = keys.stride(2);
  const int64_t vs0 = values.stride(0), vs1 = values.stride(1), vs2 = values.stride(2);
  const float scale = 1.0f / std::sqrt((float)D);
  at::parallel_for(0, b * Hkv, grain(b * Hkv, 2 * keys.numel() * 4), [&](int64_t a, int64_t e) {
    std::vector<float> p;
    for (int64_t job = a; job < e; ++job) {
      const int64_t row = job / Hkv, j = job % Hkv, L = lengths[row];
      const float* K = kp + row * ks0 + j * ks1;
      const float* Vv = vp + row * vs0 + j * vs1;
      const float* Q = qp + (row * H + j * r) * D;       // its r query heads, D apart
      float* O = op + (row * H + j * r) * D;
      p.assign(r * L, 0.0f);
      for (int64_t l = 0; l < L; ++l)
        for (int64_t h = 0; h < r; ++h) p[h * L + l] = dot(Q + h * D, K + l * ks2, D) * scale;
      for (int64_t h = 0; h < r; ++h) {
        float* ph = p.data() + h * L;
        const float m = *std::max_element(ph, ph + L);
        float sum = 0.0f;
        for (int64_t l = 0; l < L; ++l) sum += (ph[l] = std::exp(ph[l] - m));
        for (int64_t l = 0; l < L; ++l) ph[l] /= sum;
        std::fill(O + h * D, O + (h + 1) * D, 0.0f);
      }
      for (int64_t l = 0; l < L; ++l)
        for (int64_t h = 0; h < r; ++h) {
          const float w = p[h * L + l];
          for (int64_t d = 0; d < D; ++d) O[h * D + d] += w * Vv[l * vs2 + d];
        }
    }
  });
  return out;
}

// ---- attention of a few query rows over a long read-only prefix -----------------------------
// exp(x) for 16 lanes: 2^n * e^r with |r| <= ln2 / 2 (Cephes' expf polynomial, about 1e-7
// relative error); lanes below -87.3 come out as 0 (so -inf does), above 88.3 as +inf.
typedef int32_t ivec16 __attribute__((vector_size(64)));
inline vec16 vexp(vec16 x) {
  const vec16 hi = vec16{} + 88.3762626647949f, lo = vec16{} - 87.3365447505531f;
  const vec16 xc = x > hi ? hi : (x < lo ? lo : x);
  const vec16 n = __builtin_convertvector(__builtin_convertvector(xc * 1.44269504088896341f + (xc < 0 ? -0.5f : 0.5f), ivec16), vec16);
  const vec16 r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  vec16 p = vec16{} + 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const ivec16 bits = (__builtin_convertvector(n, ivec16) + 127) << 23;
  vec16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  vec16 y = p * scale;
  y = x < lo ? vec16{} : y;
  return x > hi ? vec16{} + std::numeric_limits<float>::infinity() : y;
}

constexpr int64_t PREFIX_KEYS = 64;      // keys a block: the block's scores stay in L1
constexpr int64_t PREFIX_SPLIT = 4096;   // keys a job: a KV head's keys split for the threads

// One job: rows [0, 16 * RV) of Qt (D, 16 * RV: the scaled queries, transposed) over keys
// [l0, l1) of one KV head; writes the rows' running max m, sum l and unnormalized output o (R, D).
// Scores are computed key by key as St[j] = sum_d K[j, d] Qt[d] (a vector over the rows), so the
// online softmax runs across rows in vectors; P V runs four rows at a time.
template <int RV>
void prefix_job(const float* Qt, int64_t R, int64_t D, const float* K, int64_t ks, const float* Vv, int64_t vs,
                int64_t l0, int64_t l1, float* m, float* l, float* o) {
  constexpr int64_t RP = 16 * RV;
  alignas(64) float St[PREFIX_KEYS * RP];
  vec16 mv[RV], lv[RV];
  for (int c = 0; c < RV; ++c) { mv[c] = vec16{} - std::numeric_limits<float>::infinity(); lv[c] = vec16{}; }
  std::fill(o, o + R * D, 0.0f);
  for (int64_t k0 = l0; k0 < l1; k0 += PREFIX_KEYS) {
    const int64_t n = std::min(PREFIX_KEYS, l1 - k0);
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {                  // two keys at a time: 2 * RV accumulators
      vec16 a0[RV], a1[RV];
      for (int c = 0; c < RV; ++c) a0[c] = a1[c] = vec16{};
      const float *k0p = K + (k0 + j) * ks, *k1p = k0p + ks;
      for (int64_t d = 0; d < D; ++d) {
        const vec16 b0 = vec16{} + k0p[d], b1 = vec16{} + k1p[d];
        for (int c = 0; c < RV; ++c) {
          const vec16 qv = load(Qt + d * RP + 16 * c);
          a0[c] += b0 * qv;
          a1[c] += b1 * qv;
        }
      }
      for (int c = 0; c < RV; ++c) { store(St + j * RP + 16 * c, a0[c]); store(St + (j + 1) * RP + 16 * c, a1[c]); }
    }
    for (; j < n; ++j) {
      vec16 a0[RV];
      for (int c = 0; c < RV; ++c) a0[c] = vec16{};
      const float* kp = K + (k0 + j) * ks;
      for (int64_t d = 0; d < D; ++d) {
        const vec16 b0 = vec16{} + kp[d];
        for (int c = 0; c < RV; ++c) a0[c] += b0 * load(Qt + d * RP + 16 * c);
      }
      for (int c = 0; c < RV; ++c) store(St + j * RP + 16 * c, a0[c]);
    }
    // online softmax, a vector of rows at a time; the correction rescales l and o
    alignas(64) float corr[RP];
    for (int c = 0; c < RV; ++c) {
      vec16 mx = mv[c];
      for (j = 0; j < n; ++j) { const vec16 sv = load(St + j * RP + 16 * c); mx = sv > mx ? sv : mx; }
      const vec16 cr = vexp(mv[c] - mx);           // exp(-inf) = 0 on the first block
      vec16 sum{};
      for (j = 0; j < n; ++j) {
        const vec16 pv = vexp(load(St + j * RP + 16 * c) - mx);
        store(St + j * RP + 16 * c, pv);
        sum += pv;
      }
      lv[c] = lv[c] * cr + sum;
      mv[c] = mx;
      store(corr + 16 * c, cr);
    }
    // o = o * corr + P V, four rows (and D / 16 vectors of each) at a time
    const int64_t DV = D / 16;
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
      const int rows = (int)std::min<int64_t>(4, R - r0);
      for (int64_t d0 = 0; d0 < DV; d0 += 4) {
        const int dn = (int)std::min<int64_t>(4, DV - d0);
        vec16 acc[4][4];
        for (int rr = 0; rr < 4; ++rr)
          for (int dd = 0; dd < 4; ++dd)
            acc[rr][dd] = rr < rows && dd < dn ? load(o + (r0 + rr) * D + 16 * (d0 + dd)) * corr[r0 + rr] : vec16{};
        for (j = 0; j < n; ++j) {
          const float* vp = Vv + (k0 + j) * vs + 16 * d0;
          vec16 vv[4];
          for (int dd = 0; dd < 4; ++dd) vv[dd] = dd < dn ? load(vp + 16 * dd) : vec16{};
          for (int rr = 0; rr < 4; ++rr) {
            const vec16 pv = vec16{} + St[j * RP + r0 + rr];
            for (int dd = 0; dd < 4; ++dd) acc[rr][dd] += pv * vv[dd];
          }
        }
        for (int rr = 0; rr < rows; ++rr)
          for (int dd = 0; dd < dn; ++dd) store(o + (r0 + rr) * D + 16 * (d0 + dd), acc[rr][dd]);
      }
    }
  }
  alignas(64) float mb[RP], lb[RP];
  for (int c = 0; c < RV; ++c) { store(mb + 16 * c, mv[c]); store(lb + 16 * c, lv[c]); }
  std::copy(mb, mb + R, m);
  std::copy(lb, lb + R, l);
}

// _flash(q, k, v) of engine/model.py for a read-only prefix: q (b, Hkv, R, D) (the query heads
// of a KV head as rows), keys / values (b, Hkv, L, D; rows D or more floats apart) -> (out (b,
// Hkv, R, D), log-sum-exp (b, Hkv, R)) of softmax(q k^T / sqrt(D)) v, every key visible. For a
// question's few rows over a long prefix: each KV head's keys are split into jobs that read them
// once for all its rows (the flash kernel reads them once per block of 32 rows), merged at the end.
constexpr int64_t PREFIX_MAX_ROWS = 96;
std::tuple<at::Tensor, at::Tensor> prefix_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values) {
  for (auto* t : {&q, &keys, &values})
    check(t->device().is_cpu() && t->scalar_type() == at::kFloat, "prefix attention inputs must be fp32 CPU tensors");
  check(q.dim() == 4 && keys.dim() == 4 && values.sizes() == keys.sizes() && keys.size(0) == q.size(0) &&
        keys.size(1) == q.size(1) && keys.size(3) == q.size(3) && keys.stride(3) == 1 && values.stride(3) == 1 &&
        keys.stride(2) >= keys.size(3) && values.stride(2) >= keys.size(3), "prefix attention shapes");
  const int64_t b = q.size(0), Hkv = q.size(1), R = q.size(2), D = q.size(3), L = keys.size(2);
  check(D % 16 == 0 && R >= 1 && R <= PREFIX_MAX_ROWS && L >= 1, "prefix attention: D a multiple of 16, 1..96 rows, keys");
  const int64_t RV = (R + 15) / 16, RP = 16 * RV, splits = (L + PREFIX_SPLIT - 1) / PREFIX_SPLIT;
  at::Tensor qc = q.contiguous();
  // the scaled queries, transposed and padded with zero rows: (b * Hkv, D, RP)
  std::vector<float> Qt(b * Hkv * D * RP, 0.0f);
  const float scale = 1.0f / std::sqrt((float)D);
  const float* qp = qc.const_data_ptr<float>();
  for (int64_t bh = 0; bh < b * Hkv; ++bh)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t d = 0; d < D; ++d) Qt[(bh * D + d) * RP + r] = qp[(bh * R + r) * D + d] * scale;
  std::vector<float> ms(b * Hkv * splits * R), ls(ms.size()), os(ms.size() * D);
  const float *kp = keys.const_data_ptr<float>(), *vp = values.const_data_ptr<float>();
  at::parallel_for(0, b * Hkv * splits, 1, [&](int64_t a, int64_t e) {
    for (int64_t job = a; job < e; ++job) {
      const int64_t bh = job / splits, sp = job % splits, bi = bh / Hkv, h = bh % Hkv;
      const float* K = kp + bi * keys.stride(0) + h * keys.stride(1);
      const float* Vv = vp + bi * values.stride(0) + h * values.stride(1);
      const int64_t l0 = sp * PREFIX_SPLIT, l1 = std::min(L, l0 + PREFIX_SPLIT);
      float *m = ms.data() + job * R, *l = ls.data() + job * R, *o = os.data() + job * R * D;
      const float* qt = Qt.data() + bh * D * RP;
      switch (RV) {
        case 1: prefix_job<1>(qt, R, D, K, keys.stride(2), Vv, values.stride(2), l0, l1, m, l, o); break;
        case 2: prefix_job<2>(qt, R, D, K, keys.stride(2), Vv, values.stride(2), l0, l1, m, l, o); break;
        case 3: prefix_job<3>(qt, R, D, K, keys.stride(2), Vv, values.stride(2), l0, l1, m, l, o); break;
        case 4: prefix_job<4>(qt, R, D, K, keys.stride(2), Vv, values.stride(2), l0, l1, m, l, o); break;
        case 5: prefix_job<5>(qt, R, D, K, keys.stride(2), Vv, values.stride(2), l0, l1, m, l, o); break;
        default: prefix_job<6>(qt, R, D, K, keys.stride(2), Vv, values.stride(2), l0, l1, m, l, o); break;
      }
    }
  });
  at::Tensor out = at::empty({b, Hkv, R, D}, q.options());
  at::Tensor lse = at::empty({b, Hkv, R}, q.options());
  float *op = out.mutable_data_ptr<float>(), *lp = lse.mutable_data_ptr<float>();
  for (int64_t bh = 0; bh < b * Hkv; ++bh)       // merge the splits: softmax over their maxima
    for (int64_t r = 0; r < R; ++r) {
      float M = -std::numeric_limits<float>::infinity();
      for (int64_t sp = 0; sp < splits; ++sp) M = std::max(M, ms[(bh * splits + sp) * R + r]);
      float total = 0.0f;
      float* O = op + (bh * R + r) * D;
      std::fill(O, O + D, 0.0f);
      for (int64_t sp = 0; sp < splits; ++sp) {
        const int64_t at = (bh * splits + sp) * R + r;
        const float w = std::exp(ms[at] - M);
        total += ls[at] * w;
        for (int64_t d = 0; d < D; ++d) O[d] += os[at * D + d] * w;
      }
      for (int64_t d = 0; d < D; ++d) O[d] /= total;
      lp[bh * R + r] = M + std::log(total);
    }
  return {out, lse};
}

// How many threads at::parallel_for spreads `n` one-item jobs over: the build check (a library
// compiled without OpenMP runs every loop on the calling thread, and answers 1).
int64_t parallel_threads(int64_t n) {
  std::vector<char> used(std::max(1, at::get_num_threads()), 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) { used[at::get_thread_num()] = 1; });
  return std::accumulate(used.begin(), used.end(), int64_t{0});
}

}  // namespace

TORCH_LIBRARY(omnistream_cpu, m) {
  m.def("parallel_threads(int n) -> int", &parallel_threads);
  m.def("prefix_attention(Tensor q, Tensor keys, Tensor values) -> (Tensor, Tensor)", &prefix_attention);
  m.def("linear(Tensor x, Tensor weight, Tensor? bias, int act) -> Tensor", &linear);
  m.def("linears(Tensor x, Tensor[] weights, Tensor?[] biases, int[] acts) -> Tensor[]", &linears);
  m.def("add_rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps) -> (Tensor, Tensor)", &add_rms_norm);
  m.def("mamba_step(Tensor x, Tensor in_weight, Tensor? in_bias, Tensor(a!) conv_state, Tensor(b!) ssm_state, "
        "Tensor conv_weight, Tensor? conv_bias, Tensor dt_bias, Tensor A_log, Tensor D, Tensor norm_weight, "
        "Tensor out_weight, Tensor? out_bias, int n_groups, float eps, float dt_min, float dt_max) -> Tensor",
        &mamba_step);
  m.def("route(Tensor logits, Tensor correction_bias, int top_k, int n_group, int topk_group, bool norm_topk_prob, "
        "float scaling) -> (Tensor, Tensor)", &route);
  m.def("decode_attention(Tensor q, Tensor(a!) keys, Tensor(b!) values, int[] lengths, Tensor? new_k=None, "
        "Tensor? new_v=None) -> Tensor", &decode_attention);
  m.def("grouped_experts(Tensor x, Tensor ids, Tensor weights, Tensor[] up, Tensor[] down) -> Tensor",
        &grouped_experts);
  m.def("moe_step(Tensor x, Tensor gate_weight, Tensor correction_bias, Tensor[] up, Tensor[] down, Tensor shared_up, "
        "Tensor? shared_up_bias, Tensor shared_down, Tensor? shared_down_bias, int top_k, int n_group, int topk_group, "
        "bool norm_topk_prob, float scaling) -> Tensor", &moe_step);
}
