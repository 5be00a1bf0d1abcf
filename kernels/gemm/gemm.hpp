// gemm: the matrix products of a DeepSeek layer. bf16 (and strided-batched bf16, for MLA's
// per-head absorb of W_UK and W_UV) and FP8 e4m3 with DeepSeek's block scales, through cuBLASLt on
// the GPU and Eigen on the CPU. Row-major views; C[M, N] = A[M, K] . B^T for an nn.Linear weight
// B[N, K], or A . B for B[K, N].
//
// A gemm_context owns what a device needs for this: on CUDA, the cuBLASLt handle and one plan per
// problem shape (descriptors and the algorithm), built on first use and reused, so a CUDA graph
// capture or a hot loop makes no heuristic query. The algorithm is cuBLASLt's first heuristic
// candidate, or with LIGHTCORE_GEMM_AUTOTUNE=1 the fastest of its candidates, timed once per shape
// (gemm_autotune.hpp). The workspace comes from the caller (the tensor manager):
// gemm_workspace_bytes is what the heuristic may plan for.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>

#include "kernels/gemm/gemm_autotune.hpp"
#include "kernels/gemm/gemm_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

inline std::ostream& operator<<(std::ostream& os, b_layout l) {
  return os << (l == b_layout::n_by_k ? "n_by_k" : "k_by_n");
}

// What a context has done: a test checks that a shape is planned once, a server logs it.
struct gemm_stats {
  std::int64_t plans = 0;              // distinct problem shapes planned
  std::int64_t heuristic_queries = 0;  // plans that asked cuBLASLt's heuristic (one per plan)
  std::int64_t launches = 0;           // GEMMs issued
  std::int64_t gemv_launches = 0;      // of those, by the bf16 weight-streaming kernels (M <= 4)
  std::int64_t tuned_plans = 0;        // plans whose algorithm was chosen by timing candidates
  std::int64_t tuned_not_first = 0;    // of those, plans that kept other than the first candidate
  std::int64_t candidates_timed = 0;   // candidate algorithms timed, over all tuned plans
  // Plans made while their stream was being captured into a CUDA graph: they take the first
  // candidate (no timing inside a capture) and are timed at their next call outside one.
  std::int64_t tuning_deferred = 0;
};

namespace detail {

struct gemm_state;  // the CUDA side: defined in gemm_cublaslt.cpp
struct gemm_state_deleter {
  void operator()(gemm_state* s) const noexcept;
};

void gemm_cpu(gemm_problem const& p);
#if defined(LIGHTCORE_WITH_CUDA)
gemm_state* make_gemm_state(int ordinal, gemm_autotune_options const& tune);
void destroy_gemm_state(gemm_state* s) noexcept;
gemm_stats gemm_state_stats(gemm_state const& s);
void gemm_cuda(gemm_state& s, gemm_problem const& p, void* workspace, std::int64_t workspace_bytes,
               CUstream_st* stream);
// gemm_cuda without the small-M kernels: always cuBLASLt (the peer a benchmark compares with).
void gemm_cuda_cublaslt(gemm_state& s, gemm_problem const& p, void* workspace,
                        std::int64_t workspace_bytes, CUstream_st* stream);
// The FP8 block-scaled product at M <= 128 by the weight-streaming kernel (fp8_small_m.cuh) on
// device `ordinal`; gemm_fp8_small_m_supported (fp8_small_m_params.hpp) says which problems it
// takes. No workspace; ordered on `stream`; capturable.
void gemm_fp8_small_m_cuda(gemm_problem const& p, int ordinal, CUstream_st* stream);
#endif

// A [batch?, rows, cols] operand: rank 2 (batch 1) or rank 3, unit column stride, rows that do not
// overlap. `what` names it in errors.
struct gemm_matrix {
  std::int64_t batch = 1, rows = 0, cols = 0, ld = 0, batch_stride = 0;
};

inline gemm_matrix gemm_operand(tensor_view const& v, char const* what) {
  LC_CHECK(v.rank() == 2 || v.rank() == 3,
           "gemm: " << what << " must be rank 2 [rows, cols] or rank 3 [batch, rows, cols]; got "
                    << v.shape());
  int const r = v.rank() == 3 ? 1 : 0;
  gemm_matrix m;
  m.batch = r == 1 ? v.size(0) : 1;
  m.rows = v.size(r);
  m.cols = v.size(r + 1);
  // A dimension of extent 1 may carry any stride: give it the dense one.
  m.ld = m.rows == 1 ? m.cols : v.stride(r);
  m.batch_stride = r == 1 && m.batch > 1 ? v.stride(0) : m.rows * m.ld;
  LC_CHECK((m.cols <= 1 || v.stride(r + 1) == 1) && m.ld >= m.cols && m.batch_stride >= 0,
           "gemm: " << what
                    << " needs a unit column stride, a row stride at least its width and a "
                       "non-negative batch stride; got "
                    << v);
  return m;
}

inline gemm_problem check_gemm_args(device where, tensor_view const& a, tensor_view const& b,
                                    tensor_view const& c, gemm_options const& opt) {
  LC_CHECK(a.type() == dtype::bf16 && b.type() == dtype::bf16 &&
               (c.type() == dtype::bf16 || c.type() == dtype::f32),
           "gemm supports A and B bf16 with C bf16 or f32; got A " << a.type() << ", B " << b.type()
                                                                   << ", C " << c.type());
  LC_CHECK(opt.layout == b_layout::n_by_k || opt.layout == b_layout::k_by_n,
           "gemm: unknown B layout " << int(opt.layout) << "; allowed: n_by_k, k_by_n");
  LC_CHECK(a.rank() == b.rank() && a.rank() == c.rank(),
           "gemm needs A, B and C of one rank (2, or 3 for a batch); got A "
               << a.shape() << ", B " << b.shape() << ", C " << c.shape());
  gemm_matrix const ma = gemm_operand(a, "A"), mb = gemm_operand(b, "B"), mc = gemm_operand(c, "C");
  std::int64_t const n = opt.layout == b_layout::n_by_k ? mb.rows : mb.cols;
  std::int64_t const kb = opt.layout == b_layout::n_by_k ? mb.cols : mb.rows;
  LC_CHECK(ma.batch == mb.batch && ma.batch == mc.batch && ma.cols == kb && mc.rows == ma.rows &&
               mc.cols == n,
           "gemm shapes do not agree: A "
               << a.shape() << " [M, K], B " << b.shape()
               << (opt.layout == b_layout::n_by_k ? " [N, K]" : " [K, N]") << ", C " << c.shape()
               << " [M, N]");
  LC_CHECK(ma.cols > 0, "gemm needs K >= 1; got A " << a.shape());
  LC_CHECK(a.where() == where && b.where() == where && c.where() == where,
           "gemm on " << where << " needs every view there; A is on " << a.where() << ", B on "
                      << b.where() << ", C on " << c.where());
  gemm_problem p;
  p.batch = ma.batch;
  p.m = ma.rows;
  p.n = n;
  p.k = ma.cols;
  p.a_type = a.type();
  p.b_type = b.type();
  p.c_type = c.type();
  p.layout = opt.layout;
  p.a = a.data();
  p.lda = ma.ld;
  p.stride_a = ma.batch_stride;
  p.b = b.data();
  p.ldb = mb.ld;
  p.stride_b = mb.batch_stride;
  p.c = c.data();
  p.ldc = mc.ld;
  p.stride_c = mc.batch_stride;
  p.alpha = opt.alpha;
  p.beta = opt.beta;
  p.b_constant = opt.b_constant;
  return p;
}

inline gemm_problem check_gemm_fp8_args(device where, tensor_view const& x,
                                        tensor_view const& x_scales, tensor_view const& w,
                                        tensor_view const& w_scales, tensor_view const& c) {
  LC_CHECK(x.type() == dtype::fp8_e4m3 && w.type() == dtype::fp8_e4m3 &&
               x_scales.type() == dtype::f32 && w_scales.type() == dtype::f32 &&
               c.type() == dtype::bf16,
           "gemm_fp8_block supports x and w fp8_e4m3, scales f32, C bf16; got x "
               << x.type() << ", x_scales " << x_scales.type() << ", w " << w.type()
               << ", w_scales " << w_scales.type() << ", C " << c.type());
  LC_CHECK(x.rank() == 2 && w.rank() == 2 && c.rank() == 2 && x_scales.rank() == 2 &&
               w_scales.rank() == 2,
           "gemm_fp8_block needs rank-2 views: x [M, K], x_scales [K/128, M], w [N, K], w_scales "
           "[ceil(N/128), ceil(K/128)], C [M, N]; got x "
               << x.shape() << ", x_scales " << x_scales.shape() << ", w " << w.shape()
               << ", w_scales " << w_scales.shape() << ", C " << c.shape());
  gemm_matrix const mx = gemm_operand(x, "x"), mw = gemm_operand(w, "w"), mc = gemm_operand(c, "C");
  std::int64_t const m = mx.rows, k = mx.cols, n = mw.rows;
  LC_CHECK(mw.cols == k && mc.rows == m && mc.cols == n,
           "gemm_fp8_block shapes do not agree: x " << x.shape() << " [M, K], w " << w.shape()
                                                    << " [N, K], C " << c.shape() << " [M, N]");
  LC_CHECK(k > 0 && k % gemm_fp8_block_size == 0,
           "gemm_fp8_block needs K to be a multiple of "
               << gemm_fp8_block_size << " (the activation's quantisation groups); got K = " << k);
  LC_CHECK(m % gemm_fp8_m_multiple == 0,
           "gemm_fp8_block needs M to be a multiple of "
               << gemm_fp8_m_multiple
               << " (cuBLASLt's block-scaled kernels take no other): allocate the activation, its "
                  "scales and C with M rounded up and ignore the extra rows; got M = "
               << m);
  std::int64_t const n_blocks = (n + gemm_fp8_block_size - 1) / gemm_fp8_block_size;
  std::int64_t const k_blocks = k / gemm_fp8_block_size, scale_ld = gemm_fp8_weight_scale_ld(k);
  dims const want_xs{k_blocks, m}, want_ws{n_blocks, k_blocks};
  LC_CHECK(x_scales.shape() == want_xs && x_scales.is_contiguous(),
           "gemm_fp8_block needs x_scales contiguous "
               << want_xs << " (k_major: M contiguous); got " << x_scales);
  LC_CHECK(w_scales.shape() == want_ws && (k_blocks == 1 || w_scales.stride(1) == 1) &&
               (n_blocks == 1 || w_scales.stride(0) == scale_ld),
           "gemm_fp8_block needs w_scales " << want_ws << " (DeepSeek's weight_scale_inv) with row "
                                            << "stride " << scale_ld
                                            << " (K/128 padded to a multiple of 4, as cuBLASLt "
                                               "reads them: gemm_fp8_weight_scale_ld); got "
                                            << w_scales);
  for (tensor_view const* v : {&x, &x_scales, &w, &w_scales, &c})
    LC_CHECK(v->where() == where, "gemm_fp8_block on " << where << " needs every view there; got "
                                                       << *v << " on " << v->where());
  gemm_problem p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.a_type = x.type();
  p.b_type = w.type();
  p.c_type = c.type();
  p.a = x.data();
  p.lda = mx.ld;
  p.stride_a = mx.batch_stride;
  p.b = w.data();
  p.ldb = mw.ld;
  p.stride_b = mw.batch_stride;
  p.c = c.data();
  p.ldc = mc.ld;
  p.stride_c = mc.batch_stride;
  p.a_scales = x_scales.data_as<float>();
  p.b_scales = w_scales.data_as<float>();
  return p;
}

inline void check_gemm_workspace(device where, tensor_view const& workspace) {
  LC_CHECK(workspace.numel() == 0 || (workspace.where() == where && workspace.is_contiguous()),
           "gemm needs a contiguous workspace on " << where << "; got " << workspace << " on "
                                                   << workspace.where());
}

}  // namespace detail

// Per-device state of the GEMMs: create one per backend (device) and keep it; not copyable.
// Thread-safe: calls from several threads serialise on an internal mutex (they only enqueue).
// `tune`: how the CUDA state picks each shape's algorithm (by default the first heuristic answer;
// timed when the environment's LIGHTCORE_GEMM_AUTOTUNE says on); the CPU ignores it. Plan every
// shape before a CUDA graph capture (one eager call) so that the captured algorithm is the timed
// one.
template <Backend B>
class gemm_context {
 public:
  explicit gemm_context([[maybe_unused]] B const& backend,
                        gemm_autotune_options const& tune = gemm_autotune_options_from_env()) {
    check_gemm_autotune_options(tune);
    if constexpr (B::kind == device_kind::cuda) {
#if defined(LIGHTCORE_WITH_CUDA)
      state_.reset(detail::make_gemm_state(backend.where().index, tune));
#endif
    }
  }
  gemm_stats stats() const {
#if defined(LIGHTCORE_WITH_CUDA)
    if (state_) return detail::gemm_state_stats(*state_);
#endif
    return stats_;
  }
  // For the launch functions below: the CUDA state (null on the CPU) and the CPU's launch count.
  detail::gemm_state* state() noexcept { return state_.get(); }
  gemm_stats& cpu_stats() noexcept { return stats_; }

 private:
  std::unique_ptr<detail::gemm_state, detail::gemm_state_deleter> state_;
  gemm_stats stats_;  // the CPU's count of launches
};

namespace detail {
template <Backend B>
void run_gemm(B& backend, [[maybe_unused]] detail::gemm_state* state, gemm_stats& cpu_stats,
              gemm_problem const& p, [[maybe_unused]] tensor_view const& workspace,
              [[maybe_unused]] typename B::stream_type const& stream) {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    (void)backend;
    detail::gemm_cpu(p);
    ++cpu_stats.launches;
  } else {
    static_assert(B::kind == device_kind::cuda, "gemm: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    (void)backend;
    detail::gemm_cuda(*state, p, workspace.data(), std::int64_t(workspace.nbytes()), stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "gemm on backend::cuda needs lightcore built with CUDA");
#endif
  }
}
}  // namespace detail

// C = alpha * A . op(B) + beta * C. A [M, K] bf16; B [N, K] (opt.layout n_by_k, an nn.Linear
// weight) or [K, N] (k_by_n) bf16; C [M, N] bf16 or f32; or all three rank 3 with a leading batch
// dimension of any stride (a per-head product over a [T, H, D] activation is A = x.transpose(0,
// 1)). Unit column strides; row strides free (cuBLASLt prefers multiples of 8 elements). fp32
// accumulation; K >= 1. workspace: bytes on the device (gemm_workspace_bytes is what
// the algorithm may use; less is allowed). Ordered on `stream`; no host synchronisation; capturable
// in a CUDA graph once the shape has been planned (a first call inside a capture plans it too,
// with cuBLASLt's first answer: the timing waits for the next call outside a capture).
// On CUDA, M <= 4 (k_by_n: 2) with K a multiple of 8 and 16-byte aligned A and B (strides
// included) runs the weight-streaming kernels of gemv_bf16_params.hpp instead of cuBLASLt
// (deterministic, no workspace).
template <Backend B>
void gemm(B& backend, gemm_context<B>& ctx, tensor_view const& a, tensor_view const& b,
          tensor_view const& c, tensor_view const& workspace, typename B::stream_type const& stream,
          gemm_options const& opt = {}) {
  gemm_problem const p = detail::check_gemm_args(backend.where(), a, b, c, opt);
  detail::check_gemm_workspace(backend.where(), workspace);
  detail::run_gemm(backend, ctx.state(), ctx.cpu_stats(), p, workspace, stream);
}

// C[M, N] bf16 = (x . diag-block-scales) . (w . block-scales)^T: DeepSeek-V3's FP8 linear layer.
// x [M, K] fp8_e4m3 quantised per token per 128 columns with x_scales [K/128, M] f32 contiguous
// (quantize_per_token_group with scale_layout::k_major writes exactly this); w [N, K] fp8_e4m3 with
// w_scales [ceil(N/128), K/128] f32 (the checkpoint's weight_scale_inv) stored with row stride
// gemm_fp8_weight_scale_ld(K). K a multiple of 128; M a multiple of 4 (gemm_fp8_m_multiple: pad
// the token count); N need not be a multiple of 128 (DeepSeek's kv_a_proj_with_mqa has N = 576,
// the fused q_a + kv_a 2112: the partial last block of rows has its own scale). fp32 accumulation
// and scaling.
template <Backend B>
void gemm_fp8_block(B& backend, gemm_context<B>& ctx, tensor_view const& x,
                    tensor_view const& x_scales, tensor_view const& w, tensor_view const& w_scales,
                    tensor_view const& c, tensor_view const& workspace,
                    typename B::stream_type const& stream) {
  gemm_problem const p = detail::check_gemm_fp8_args(backend.where(), x, x_scales, w, w_scales, c);
  detail::check_gemm_workspace(backend.where(), workspace);
  detail::run_gemm(backend, ctx.state(), ctx.cpu_stats(), p, workspace, stream);
}

}  // namespace lightcore::kernels
