// gemm, bf16 at M <= 4 (decode): the params of the weight-streaming CUDA kernels, their launch
// geometry (a function of the shape and the SM count only) and which problems they take. Host
// code; no CUDA header.
//
// At a few tokens a bf16 product is a stream of the weight: cuBLASLt's tensor-core tiles (and its
// split-K with a separate reduction kernel) reach 0.13-0.87 of the HBM ceiling there. These
// kernels read every weight byte once with 16-byte non-caching loads, keep fp32 accumulators in
// registers and reduce in a fixed order: no workspace, deterministic, capturable.
//  - n_by_k (B [N, K], an nn.Linear weight): a CTA owns gemv_bf16_rows_per_cta rows of N and
//    splits K over its threads (8 contiguous K values per load); lanes and warps are summed by a
//    shuffle tree and shared memory.
//  - k_by_n (B [K, N], MLA's W_UK absorb): a thread owns 8 contiguous columns and streams blocks
//    of 8 rows of K; when the tiles of N (times the batch) cannot fill the GPU, K is also split
//    over the CTAs of a thread-block cluster, which sum through distributed shared memory in rank
//    order.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/gemm/gemm_params.hpp"

struct CUstream_st;  // what cudaStream_t points to

namespace lightcore::kernels {

// The largest token count (rows of A and C) the kernels take (n_by_k; buckets of 1, 2 and 4). At
// 8 tokens their fp32 FMAs (4 per weight byte) bound the issue rate and cuBLASLt's tensor cores
// win, 1.5x on R1's q_b (docs/perf/gemv-bf16.md).
inline constexpr std::int64_t gemm_gemv_bf16_max_m = 4;
// Elements moved by one 16-byte load: K (n_by_k), N (k_by_n), row strides and batch strides of A
// and B must be multiples of it.
inline constexpr std::int64_t gemm_gemv_bf16_vector = 8;
// n_by_k: weight rows of one CTA (each thread keeps rows x tokens fp32 sums).
inline constexpr int gemv_bf16_rows_per_cta = 4;
// n_by_k: at most this many warps split a CTA's K (fewer when K / 8 is short).
inline constexpr int gemv_bf16_max_warps = 4;
// k_by_n takes at most this many tokens: at 4 it was 12% behind cuBLASLt at 128 heads
// (docs/perf/gemv-bf16.md).
inline constexpr std::int64_t gemm_gemv_bf16_kn_max_m = 2;
// k_by_n: columns of one CTA (8 groups of 8) and its threads (16 row-block slots x 8 groups).
inline constexpr int gemv_bf16_kn_cols = 64;
inline constexpr int gemv_bf16_kn_threads = 128;
inline constexpr int gemv_bf16_kn_slots = gemv_bf16_kn_threads / (gemv_bf16_kn_cols / 8);
// k_by_n: the most CTAs that split K (a portable cluster).
inline constexpr int gemv_bf16_max_splits = 8;

// C[b][M, N] = alpha * A[b][M, K] . op(B[b]) + beta * C[b]: plain data, passed by value to the
// kernel. Element strides; bf16 as its 16-bit pattern.
struct gemv_bf16_params {
  std::uint16_t const* a = nullptr;  // [batch][M, K]
  std::uint16_t const* b = nullptr;  // [batch][N, K] (n_by_k) or [batch][K, N] (k_by_n)
  void* c = nullptr;                 // [batch][M, N] bf16 or f32
  std::int64_t batch = 1, m = 0, n = 0, k = 0;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
  std::int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  float alpha = 1.0f, beta = 0.0f;  // beta 0: C is not read
  bool c_f32 = false;               // C f32 (else bf16)
  bool k_by_n = false;              // B [K, N] (else [N, K])
  bool b_constant = false;          // gemm_options::b_constant: B may be read before the PDL wait
};

// How a problem is launched; chosen once per shape (the gemm plan) so that a captured graph
// replays the geometry it was captured with.
struct gemv_bf16_geometry {
  int warps = 1;   // n_by_k: warps per CTA (1..gemv_bf16_max_warps)
  int splits = 1;  // k_by_n: CTAs (one cluster) that split K (1..gemv_bf16_max_splits)
};

// Whether the streaming kernels take problem p (as check_gemm_args builds it): A and B bf16, C
// bf16 or f32, 1 <= M <= 4 (n_by_k) or 2 (k_by_n), K a multiple of 8 and N of 8 (k_by_n), A and B
// 16-byte aligned with row (and, batched, batch) strides multiples of 8 elements, batch and the
// grid within CUDA's limits. Problems it refuses go to cuBLASLt.
inline bool gemm_gemv_bf16_supported(gemm_problem const& p) {
  constexpr std::int64_t v = gemm_gemv_bf16_vector;
  auto aligned = [](void const* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  bool const batched = p.batch > 1;
  bool const nk = p.layout == b_layout::n_by_k;
  return p.a_scales == nullptr && p.a_type == dtype::bf16 && p.b_type == dtype::bf16 &&
         (p.c_type == dtype::bf16 || p.c_type == dtype::f32) && p.m >= 1 &&
         p.m <= (nk ? gemm_gemv_bf16_max_m : gemm_gemv_bf16_kn_max_m) && p.n >= 1 && p.k >= v &&
         p.k % v == 0 && (nk || p.n % v == 0) && p.batch >= 1 && p.batch <= 65535 &&
         (nk || (p.n + gemv_bf16_kn_cols - 1) / gemv_bf16_kn_cols <= 65535) && aligned(p.a) &&
         aligned(p.b) && p.lda % v == 0 && p.ldb % v == 0 &&
         (!batched || (p.stride_a % v == 0 && p.stride_b % v == 0));
}

// The launch geometry of a supported problem on a device of `num_sms` SMs.
//  - n_by_k: enough warps that each thread has at least one 8-wide K chunk per row.
//  - k_by_n: split K when the column tiles (times the batch) give fewer than two CTAs per SM,
//    keeping at least one 8-row block per thread of every CTA.
inline gemv_bf16_geometry gemv_bf16_plan(gemm_problem const& p, int num_sms) {
  gemv_bf16_geometry g;
  std::int64_t const chunks = p.k / gemm_gemv_bf16_vector;
  g.warps = int(std::clamp<std::int64_t>((chunks + 31) / 32, 1, gemv_bf16_max_warps));
  if (p.layout == b_layout::k_by_n) {
    std::int64_t const tiles = p.batch * ((p.n + gemv_bf16_kn_cols - 1) / gemv_bf16_kn_cols);
    std::int64_t const target = 2 * std::int64_t(std::max(num_sms, 1));
    std::int64_t const want = tiles < target ? (target + tiles - 1) / tiles : 1;
    std::int64_t const most = std::max<std::int64_t>(1, chunks / gemv_bf16_kn_slots);
    g.splits = int(std::min<std::int64_t>({want, most, gemv_bf16_max_splits}));
  }
  return g;
}

namespace detail {
#if defined(LIGHTCORE_WITH_CUDA)
// The product p (gemm_gemv_bf16_supported) by the streaming kernels with geometry g, ordered on
// `stream` (the caller has made the device current). No workspace; capturable.
void gemm_gemv_bf16_cuda(gemm_problem const& p, gemv_bf16_geometry const& g, CUstream_st* stream);
#endif
}  // namespace detail

}  // namespace lightcore::kernels
