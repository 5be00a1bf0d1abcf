// gemm: the CUDA backend through cuBLASLt. cuBLASLt is column-major, so a row-major
// C[M, N] = A[M, K] . op(B) is issued as the column-major C^T[N, M] = op(B)^T . A^T:
// cuBLASLt's A is our B (an [N, K] weight is K x N column-major, TRANSA = T), cuBLASLt's B is our
// A (K x M column-major, TRANSB = N) and D is N x M column-major with leading dimension ldc.
// For FP8 that is also the only layout Hopper's FP8 tensor-core GEMMs take ("TN"), and the scale
// layouts that follow from it are the ones DeepSeek ships: BLK128x128_32F on the weight
// ([N/128][K/128], K-blocks contiguous) and VEC128_32F on the activation ([K/128][M]).
//
// The algorithm of a shape is chosen once, when it is planned: cuBLASLt's heuristic ranks its
// candidates by a model, and the first is not always the fastest
// (docs/perf/gemm-algo-selection.md), so the first few are timed on scratch operands of the
// problem's extents and the fastest is kept (gemm_autotune.hpp has the rule and the switch).
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/gemm/fp8_small_m_params.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/gemm/gemv_bf16_params.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"

#define LC_CUBLAS_CHECK(call)                                                         \
  do {                                                                                \
    cublasStatus_t const lc_cublas_status_ = (call);                                  \
    LC_CHECK(lc_cublas_status_ == CUBLAS_STATUS_SUCCESS,                              \
             #call << " failed: " << cublasLtGetStatusName(lc_cublas_status_) << " (" \
                   << cublasLtGetStatusString(lc_cublas_status_) << ")");             \
  } while (0)

namespace lightcore::kernels::detail {
namespace {

cudaDataType_t cuda_type(dtype t) {
  switch (t) {
    case dtype::bf16: return CUDA_R_16BF;
    case dtype::f32: return CUDA_R_32F;
    case dtype::fp8_e4m3: return CUDA_R_8F_E4M3;
    default: LC_THROW("gemm: no cuBLASLt type for " << t);
  }
}

// FP8 problems this small go to the weight-streaming kernel (fp8_small_m.cuh) instead of
// cuBLASLt: measured on the H100 (docs/perf/gemm-fp8-small-m.md), it is ahead only where a weight
// has few 128-row blocks (N = 576: 0.13-0.19 of the HBM ceiling against cuBLASLt's 0.09, which
// cannot spread 4.5 row blocks over 132 SMs) and few tokens; elsewhere cuBLASLt is as fast or
// faster.
constexpr std::int64_t small_m_dispatch_max_m = 16;
constexpr std::int64_t small_m_dispatch_max_n = 1024;
// bf16 problems at M <= 4 that gemm_gemv_bf16_supported accepts go to the weight-streaming
// kernels (gemv_bf16.cuh; measured in docs/perf/gemv-bf16.md); their plan holds the geometry.

struct plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A, B, C = D
  cublasLtMatmulAlgo_t algo{};
  // The heuristic's answers, best first by its model; kept until timed (then only `algo` is used).
  std::vector<cublasLtMatmulAlgo_t> candidates;
  bool tune_pending = false;   // candidates to time at the first call outside a graph capture
  bool tune_deferred = false;  // counted in tuning_deferred already
  bool fp8 = false;
  // bf16 at M <= 4 that the streaming kernels take: no cuBLASLt descriptors, only their geometry.
  bool gemv = false;
  gemv_bf16_geometry gemv_geometry{};

  plan() = default;
  plan(plan const&) = delete;
  plan& operator=(plan const&) = delete;
  ~plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

cublasLtMatrixLayout_t make_layout(cudaDataType_t type, std::int64_t rows, std::int64_t cols,
                                   std::int64_t ld, std::int64_t batch, std::int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  LC_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&layout, type, std::uint64_t(rows), std::uint64_t(cols), ld));
  if (batch > 1) {
    auto const count = std::int32_t(batch);
    LC_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                     &count, sizeof(count)));
    LC_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return layout;
}

}  // namespace

static void set_scale_pointers(plan& pl, gemm_problem const& p) {
  void const* weight_scales = p.b_scales;
  void const* activation_scales = p.a_scales;
  LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                 &weight_scales, sizeof(weight_scales)));
  LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                 &activation_scales, sizeof(activation_scales)));
}

namespace {

// Random bytes for a scratch operand of type t, never zero (the tensor cores draw less power, and
// some kernels run faster, on zeros): bf16 of magnitude 2^-4 .. 2^4 with random signs; fp8_e4m3
// codes of magnitude 2^-3 .. 2^3 (never the NaN code); f32 positive, 2^-8 .. 2^-6 (as scales are).
std::vector<std::uint8_t> scratch_pattern(dtype t, std::size_t bytes) {
  std::vector<std::uint8_t> v(bytes);
  std::uint64_t state = 0x5EED'0000'0000'0000ull + std::uint64_t(t);
  auto next = [&] {  // splitmix64
    std::uint64_t z = (state += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    return z ^ (z >> 31);
  };
  std::size_t const e = size_of(t);
  for (std::size_t i = 0; i + e <= bytes; i += e) {
    std::uint64_t const z = next();
    if (t == dtype::fp8_e4m3) {
      v[i] = std::uint8_t(((z >> 63) << 7) | ((4u + (z >> 8) % 7u) << 3) | (z & 7u));
    } else if (t == dtype::bf16) {
      auto const bits =
          std::uint16_t(((z >> 63) << 15) | ((127u - 4u + (z >> 8) % 8u) << 7) | (z & 0x7Fu));
      std::memcpy(&v[i], &bits, 2);
    } else {
      float const f = std::ldexp(1.0f + float(z & 0xFFFFu) / 65536.0f, -8 + int((z >> 20) % 2u));
      std::memcpy(&v[i], &f, 4);
    }
  }
  return v;
}

// One device allocation, stream-ordered, freed on `stream` when it goes out of scope.
struct scratch_block {
  void* base = nullptr;
  cudaStream_t stream = nullptr;
  scratch_block(std::size_t bytes, cudaStream_t s) : stream(s) {
    if (cudaMallocAsync(&base, bytes, s) != cudaSuccess) {
      base = nullptr;
      (void)cudaGetLastError();  // out of memory is not sticky: the shape keeps the first answer
    }
  }
  scratch_block(scratch_block const&) = delete;
  scratch_block& operator=(scratch_block const&) = delete;
  ~scratch_block() {
    if (base) cudaFreeAsync(base, stream);
  }
};

// A CUDA event, destroyed with its owner.
struct timing_event {
  cudaEvent_t e = nullptr;
  timing_event() { LC_CUDA_CHECK(cudaEventCreate(&e)); }
  timing_event(timing_event const&) = delete;
  timing_event& operator=(timing_event const&) = delete;
  ~timing_event() {
    if (e) cudaEventDestroy(e);
  }
};

// Whether `stream` is being captured into a CUDA graph (then nothing may synchronise or allocate
// outside the graph's rules). A stream whose state cannot be read counts as captured.
bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

}  // namespace

struct gemm_state {
  int ordinal = 0;
  cublasLtHandle_t handle = nullptr;
  gemm_autotune_options tune;
  mutable std::mutex mutex;  // guards the map, the stats and the per-call descriptor attributes
  std::map<gemm_plan_key, std::unique_ptr<plan>> plans;
  gemm_stats stats;

  ~gemm_state() {
    plans.clear();
    if (handle) cublasLtDestroy(handle);
  }

  // The plan of p's shape; `streaming` lets a bf16 problem at M <= 4 take the streaming kernels.
  // The key holds everything gemm_gemv_bf16_supported reads (extents, types, layout, strides,
  // pointer alignments), so one key never means both routes.
  plan& plan_for(gemm_problem const& p, std::int64_t workspace_bytes, bool streaming) {
    // A problem the streaming kernels take may also be planned for cuBLASLt: the route is keyed.
    bool const gemv = streaming && gemm_gemv_bf16_supported(p);
    gemm_plan_key const key = gemm_plan_key_of(p, workspace_bytes, gemv);
    auto it = plans.find(key);
    if (it != plans.end()) return *it->second;
    auto made = std::make_unique<plan>();
    if (gemv) {
      made->gemv = true;
      made->gemv_geometry = gemv_bf16_plan(p, backend::multiprocessor_count(ordinal));
    } else {
      build(*made, p, key, workspace_bytes);
    }
    ++stats.plans;
    return *plans.emplace(key, std::move(made)).first->second;
  }

  void build(plan& pl, gemm_problem const& p, gemm_plan_key const& key,
             std::int64_t workspace_bytes) {
    pl.fp8 = p.a_scales != nullptr;
    LC_CUBLAS_CHECK(cublasLtMatmulDescCreate(&pl.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t const trans_a = p.layout == b_layout::n_by_k ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t const trans_b = CUBLAS_OP_N;
    LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                                   sizeof(trans_a)));
    LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                                   sizeof(trans_b)));
    if (pl.fp8) {
      // Our B (the weight) is cuBLASLt's A: one scale per 128 x 128 block; our A (the activation)
      // is cuBLASLt's B: one scale per 128 elements along K.
      auto const weight_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
      auto const activation_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
      LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                                                     &weight_mode, sizeof(weight_mode)));
      LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                                                     &activation_mode, sizeof(activation_mode)));
      // The heuristic refuses (INVALID_VALUE) a block-scaled problem whose scale pointers are
      // unset; each call sets its own again.
      set_scale_pointers(pl, p);
    }
    // cuBLASLt's A: our B, stored [N, K] (K x N column-major) or [K, N] (N x K column-major).
    bool const nk = p.layout == b_layout::n_by_k;
    pl.a = make_layout(cuda_type(p.b_type), nk ? p.k : p.n, nk ? p.n : p.k, p.ldb, p.batch,
                       p.stride_b);
    pl.b = make_layout(cuda_type(p.a_type), p.k, p.m, p.lda, p.batch, p.stride_a);
    pl.c = make_layout(cuda_type(p.c_type), p.n, p.m, p.ldc, p.batch, p.stride_c);

    cublasLtMatmulPreference_t pref = nullptr;
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, decltype(&cublasLtMatmulPreferenceDestroy)>
        pref_owner(pref, &cublasLtMatmulPreferenceDestroy);
    auto const ws = std::uint64_t(workspace_bytes);
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // cuBLASLt's A is our B and its B our A.
    auto const align_a = std::uint32_t(key[gemm_plan_key_align_b]),
               align_b = std::uint32_t(key[gemm_plan_key_align_a]),
               align_c = std::uint32_t(key[gemm_plan_key_align_c]);
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));

    // Every answer is an algorithm valid for these descriptors, this workspace and these
    // alignments, so whichever is kept computes the same product (up to accumulation order).
    // The first candidate is the answer to a one-result query, exactly what the selection off
    // takes: measured, a query for several answers can rank another kernel first, and the
    // selection must never start from a different baseline than the switch's off position.
    cublasLtMatmulHeuristicResult_t first{};
    int found = 0;
    ++stats.heuristic_queries;
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, pl.op, pl.a, pl.b, pl.c, pl.c,
                                                           pref, 1, &first, &found);
    if (status == CUBLAS_STATUS_SUCCESS && found > 0 && first.state == CUBLAS_STATUS_SUCCESS)
      pl.candidates.push_back(first.algo);
    if (tune.enabled && tune.max_candidates > 1 && !pl.candidates.empty()) {
      std::vector<cublasLtMatmulHeuristicResult_t> more(
          static_cast<std::size_t>(tune.max_candidates));
      int more_found = 0;
      if (cublasLtMatmulAlgoGetHeuristic(handle, pl.op, pl.a, pl.b, pl.c, pl.c, pref,
                                         tune.max_candidates, more.data(),
                                         &more_found) == CUBLAS_STATUS_SUCCESS) {
        for (int i = 0; i < more_found; ++i) {
          auto const& r = more[std::size_t(i)];
          bool const seen = std::any_of(
              pl.candidates.begin(), pl.candidates.end(), [&](cublasLtMatmulAlgo_t const& a) {
                return std::memcmp(a.data, r.algo.data, sizeof(a.data)) == 0;
              });
          if (r.state == CUBLAS_STATUS_SUCCESS && !seen &&
              std::ssize(pl.candidates) < tune.max_candidates)
            pl.candidates.push_back(r.algo);
        }
      }
    }
    LC_CHECK(!pl.candidates.empty(),
             "gemm: cuBLASLt has no algorithm for "
                 << (pl.fp8 ? "an FP8 block-scaled" : "a") << " GEMM with M " << p.m << ", N "
                 << p.n << ", K " << p.k << ", batch " << p.batch << ", A " << p.a_type << " ld "
                 << p.lda << ", B " << p.b_type << " " << p.layout << " ld " << p.ldb << ", C "
                 << p.c_type << " ld " << p.ldc << ", alignments (bytes) A " << align_b << " B "
                 << align_a << " C " << align_c << ", workspace " << workspace_bytes << " ("
                 << cublasLtGetStatusName(status)
                 << "); cuBLASLt wants 16-byte aligned pointers and leading dimensions"
                 << (pl.fp8 ? " and, for FP8, M a multiple of 4" : ""));
    pl.algo = pl.candidates.front();
    pl.tune_pending = pl.candidates.size() > 1;
    if (!pl.tune_pending) pl.candidates.clear();
  }

  // Times pl's candidates on scratch operands of p's extents, on `stream` with the caller's
  // workspace, and keeps the fastest (gemm_autotune_choice). Inside a graph capture it only
  // notes that the plan waits; where the scratch does not fit (max_scratch_bytes, or the device's
  // free memory) the plan keeps the first answer. Synchronises `stream`: it runs once per shape.
  void tune_plan(plan& pl, gemm_problem const& p, void* workspace, std::int64_t workspace_bytes,
                 cudaStream_t stream) {
    if (capturing(stream)) {
      if (!pl.tune_deferred) ++stats.tuning_deferred;
      pl.tune_deferred = true;
      return;
    }
    pl.tune_pending = false;
    std::vector<cublasLtMatmulAlgo_t> const candidates = std::move(pl.candidates);
    pl.candidates = {};

    // The scratch operands: the problem's spans at its strides, each 256-byte aligned (at least
    // the alignment the candidates were asked for).
    bool const nk = p.layout == b_layout::n_by_k;
    std::int64_t const k_blocks = p.k / gemm_fp8_block_size;
    std::int64_t const n_blocks = (p.n + gemm_fp8_block_size - 1) / gemm_fp8_block_size;
    struct part {
      dtype type;
      std::int64_t elements;
      std::size_t offset = 0;
    };
    // Last, a buffer of twice the L2 that is cleared before every timed call, so that each call
    // finds its operands in HBM as a layer's GEMM does (weights are read once per step), not in
    // the L2 where the previous call left them: measured, a warm-L2 timing picks kernels that are
    // slower on cold weights at M = 128.
    int l2_bytes = 0;
    LC_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, ordinal));
    std::array<part, 6> parts{
        part{p.a_type, gemm_operand_span(p.batch, p.m, p.k, p.lda, p.stride_a)},
        part{p.b_type,
             gemm_operand_span(p.batch, nk ? p.n : p.k, nk ? p.k : p.n, p.ldb, p.stride_b)},
        part{p.c_type, gemm_operand_span(p.batch, p.m, p.n, p.ldc, p.stride_c)},
        part{dtype::f32, pl.fp8 ? k_blocks * p.m : 0},
        part{dtype::f32, pl.fp8 ? n_blocks * gemm_fp8_weight_scale_ld(p.k) : 0},
        part{dtype::u8, 2 * std::int64_t(l2_bytes)}};
    std::size_t total = 0;
    for (part& q : parts) {
      q.offset = total;
      total += (std::size_t(q.elements) * size_of(q.type) + 255) / 256 * 256;
    }
    if (std::int64_t(total) > tune.max_scratch_bytes) return;
    scratch_block const scratch(total, stream);
    if (scratch.base == nullptr) return;
    auto* const base = static_cast<std::uint8_t*>(scratch.base);
    constexpr std::size_t pattern_bytes = std::size_t(1) << 20;
    for (part const& q : parts) {
      std::size_t const bytes = std::size_t(q.elements) * size_of(q.type);
      if (bytes == 0 || &q == &parts[5]) continue;
      // One upload of a random pattern, then doubling copies on the device.
      auto const pattern = scratch_pattern(q.type, std::min(bytes, pattern_bytes));
      LC_CUDA_CHECK(cudaMemcpyAsync(base + q.offset, pattern.data(), pattern.size(),
                                    cudaMemcpyHostToDevice, stream));
      for (std::size_t filled = pattern.size(); filled < bytes; filled *= 2)
        LC_CUDA_CHECK(cudaMemcpyAsync(base + q.offset + filled, base + q.offset,
                                      std::min(filled, bytes - filled), cudaMemcpyDeviceToDevice,
                                      stream));
    }
    gemm_problem s = p;
    s.a = base + parts[0].offset;
    s.b = base + parts[1].offset;
    s.c = base + parts[2].offset;
    if (pl.fp8) {
      s.a_scales = reinterpret_cast<float const*>(base + parts[3].offset);
      s.b_scales = reinterpret_cast<float const*>(base + parts[4].offset);
      set_scale_pointers(pl, s);
    }
    float const alpha = s.alpha, beta = s.beta;
    auto const call = [&](cublasLtMatmulAlgo_t const& algo) {
      return cublasLtMatmul(handle, pl.op, &alpha, s.b, pl.a, s.a, pl.b, &beta, s.c, pl.c, s.c,
                            pl.c, &algo, workspace, std::size_t(workspace_bytes), stream);
    };

    void* const flush = base + parts[5].offset;
    std::size_t const flush_bytes = std::size_t(parts[5].elements);

    // Each timed call between its own two events, after the L2 is cleared; a candidate's time is
    // the median of its rounds x timed_calls samples.
    std::size_t const n = candidates.size();
    std::size_t const per = std::size_t(tune.rounds) * std::size_t(tune.timed_calls);
    std::vector<timing_event> starts(n * per);
    std::vector<timing_event> stops(n * per);
    std::vector<bool> failed(n, false);
    for (int r = 0; r < tune.rounds; ++r) {
      for (std::size_t c = 0; c < n; ++c) {
        for (int w = 0; r == 0 && w < tune.warmup_calls && !failed[c]; ++w)
          failed[c] = call(candidates[c]) != CUBLAS_STATUS_SUCCESS;
        for (int t = 0; t < tune.timed_calls && !failed[c]; ++t) {
          std::size_t const at = c * per + std::size_t(r) * std::size_t(tune.timed_calls) + t;
          if (flush_bytes > 0) LC_CUDA_CHECK(cudaMemsetAsync(flush, r + t, flush_bytes, stream));
          LC_CUDA_CHECK(cudaEventRecord(starts[at].e, stream));
          failed[c] = call(candidates[c]) != CUBLAS_STATUS_SUCCESS;
          LC_CUDA_CHECK(cudaEventRecord(stops[at].e, stream));
        }
      }
    }
    LC_CUDA_CHECK(cudaStreamSynchronize(stream));
    LC_CUDA_CHECK(cudaGetLastError());
    std::vector<double> seconds(n, std::numeric_limits<double>::quiet_NaN());
    std::vector<double> samples;
    for (std::size_t c = 0; c < n; ++c) {
      if (failed[c]) continue;
      samples.clear();
      for (std::size_t i = 0; i < per; ++i) {
        float ms = 0.0f;
        LC_CUDA_CHECK(cudaEventElapsedTime(&ms, starts[c * per + i].e, stops[c * per + i].e));
        samples.push_back(double(ms) / 1e3);
      }
      auto const mid = samples.begin() + std::ptrdiff_t(samples.size() / 2);
      std::nth_element(samples.begin(), mid, samples.end());
      seconds[c] = *mid;
    }
    int const chosen = tune.pinned_candidate >= 0 && std::size_t(tune.pinned_candidate) < n
                           ? tune.pinned_candidate
                           : gemm_autotune_choice(seconds, tune.min_gain);
    pl.algo = candidates[std::size_t(chosen)];
    ++stats.tuned_plans;
    stats.tuned_not_first += chosen != 0;
    stats.candidates_timed += std::int64_t(n);
  }
};

gemm_state* make_gemm_state(int ordinal, gemm_autotune_options const& tune) {
  check_gemm_autotune_options(tune);
  backend::device_guard const guard(ordinal);
  auto state = std::make_unique<gemm_state>();
  state->ordinal = ordinal;
  state->tune = tune;
  LC_CUBLAS_CHECK(cublasLtCreate(&state->handle));
  return state.release();
}

void destroy_gemm_state(gemm_state* s) noexcept { delete s; }

gemm_stats gemm_state_stats(gemm_state const& s) {
  std::lock_guard const lock(s.mutex);
  return s.stats;
}

namespace {

void run_cuda(gemm_state& s, gemm_problem const& p, void* workspace, std::int64_t workspace_bytes,
              CUstream_st* stream, bool streaming) {
  backend::device_guard const guard(s.ordinal);
  std::lock_guard const lock(s.mutex);
  if (streaming && p.a_scales != nullptr && p.m <= small_m_dispatch_max_m &&
      p.n <= small_m_dispatch_max_n && gemm_fp8_small_m_supported(p)) {
    gemm_fp8_small_m_cuda(p, s.ordinal, stream);
    ++s.stats.launches;
    return;
  }
  plan& pl = s.plan_for(p, workspace_bytes, streaming);
  if (pl.gemv) {
    gemm_gemv_bf16_cuda(p, pl.gemv_geometry, stream);
    ++s.stats.launches;
    ++s.stats.gemv_launches;
    return;
  }
  if (pl.tune_pending) s.tune_plan(pl, p, workspace, workspace_bytes, stream);
  if (pl.fp8) set_scale_pointers(pl, p);
  float const alpha = p.alpha, beta = p.beta;
  LC_CUBLAS_CHECK(cublasLtMatmul(s.handle, pl.op, &alpha, p.b, pl.a, p.a, pl.b, &beta, p.c, pl.c,
                                 p.c, pl.c, &pl.algo, workspace, std::size_t(workspace_bytes),
                                 stream));
  ++s.stats.launches;
}

}  // namespace

void gemm_cuda(gemm_state& s, gemm_problem const& p, void* workspace, std::int64_t workspace_bytes,
               CUstream_st* stream) {
  run_cuda(s, p, workspace, workspace_bytes, stream, true);
}

void gemm_cuda_cublaslt(gemm_state& s, gemm_problem const& p, void* workspace,
                        std::int64_t workspace_bytes, CUstream_st* stream) {
  run_cuda(s, p, workspace, workspace_bytes, stream, false);
}

}  // namespace lightcore::kernels::detail
