// gemm: the CUDA backend through cuBLASLt. cuBLASLt is column-major, so a row-major
// C[M, N] = A[M, K] . op(B) is issued as the column-major C^T[N, M] = op(B)^T . A^T:
// cuBLASLt's A is our B (an [N, K] weight is K x N column-major, TRANSA = T), cuBLASLt's B is our
// A (K x M column-major, TRANSB = N) and D is N x M column-major with leading dimension ldc.
// For FP8 that is also the only layout Hopper's FP8 tensor-core GEMMs take ("TN"), and the scale
// layouts that follow from it are the ones DeepSeek ships: BLK128x128_32F on the weight
// ([N/128][K/128], K-blocks contiguous) and VEC128_32F on the activation ([K/128][M]).
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

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

// The largest power of two (up to 256 bytes) that divides the address and every row and batch
// offset of an operand: what cuBLASLt may assume of every pointer it forms.
std::int64_t alignment_of(void const* p, std::int64_t ld, std::int64_t stride, dtype t) {
  std::uint64_t const e = size_of(t);
  std::uint64_t const bits = reinterpret_cast<std::uintptr_t>(p) | (std::uint64_t(ld) * e) |
                             (std::uint64_t(stride) * e) | 256u;
  return std::int64_t(bits & (~bits + 1));
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

// Everything that changes the descriptors or the algorithm's validity: extents, strides, types,
// pointer alignments and the workspace offered; last, the route (1: the streaming kernels).
// Scalars are set per call.
using plan_key = std::array<std::int64_t, 21>;

plan_key key_of(gemm_problem const& p, std::int64_t workspace_bytes) {
  return {p.batch,
          p.m,
          p.n,
          p.k,
          std::int64_t(p.a_type),
          std::int64_t(p.b_type),
          std::int64_t(p.c_type),
          std::int64_t(p.layout),
          p.lda,
          p.ldb,
          p.ldc,
          p.batch > 1 ? p.stride_a : 0,
          p.batch > 1 ? p.stride_b : 0,
          p.batch > 1 ? p.stride_c : 0,
          alignment_of(p.a, p.lda, p.batch > 1 ? p.stride_a : 0, p.a_type),
          alignment_of(p.b, p.ldb, p.batch > 1 ? p.stride_b : 0, p.b_type),
          alignment_of(p.c, p.ldc, p.batch > 1 ? p.stride_c : 0, p.c_type),
          p.beta != 0.0f,
          p.a_scales != nullptr,
          workspace_bytes,
          0};
}

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

struct gemm_state {
  int ordinal = 0;
  cublasLtHandle_t handle = nullptr;
  mutable std::mutex mutex;  // guards the map, the stats and the per-call descriptor attributes
  std::map<plan_key, std::unique_ptr<plan>> plans;
  gemm_stats stats;

  ~gemm_state() {
    plans.clear();
    if (handle) cublasLtDestroy(handle);
  }

  // The plan of p's shape; `streaming` lets a bf16 problem at M <= 4 take the streaming kernels.
  // The key holds everything gemm_gemv_bf16_supported reads (extents, types, layout, strides,
  // pointer alignments), so one key never means both routes.
  plan& plan_for(gemm_problem const& p, std::int64_t workspace_bytes, bool streaming) {
    plan_key key = key_of(p, workspace_bytes);
    bool const gemv = streaming && gemm_gemv_bf16_supported(p);
    key[20] = gemv;  // a problem the streaming kernels take may also be planned for cuBLASLt
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

  void build(plan& pl, gemm_problem const& p, plan_key const& key, std::int64_t workspace_bytes) {
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
    auto const align_a = std::uint32_t(key[15]), align_b = std::uint32_t(key[14]),
               align_c = std::uint32_t(key[16]);
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
    LC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    ++stats.heuristic_queries;
    cublasStatus_t const status = cublasLtMatmulAlgoGetHeuristic(handle, pl.op, pl.a, pl.b, pl.c,
                                                                 pl.c, pref, 1, &result, &found);
    LC_CHECK(status == CUBLAS_STATUS_SUCCESS && found > 0,
             "gemm: cuBLASLt has no algorithm for "
                 << (pl.fp8 ? "an FP8 block-scaled" : "a") << " GEMM with M " << p.m << ", N "
                 << p.n << ", K " << p.k << ", batch " << p.batch << ", A " << p.a_type << " ld "
                 << p.lda << ", B " << p.b_type << " " << p.layout << " ld " << p.ldb << ", C "
                 << p.c_type << " ld " << p.ldc << ", alignments (bytes) A " << align_b << " B "
                 << align_a << " C " << align_c << ", workspace " << workspace_bytes << " ("
                 << cublasLtGetStatusName(status)
                 << "); cuBLASLt wants 16-byte aligned pointers and leading dimensions"
                 << (pl.fp8 ? " and, for FP8, M a multiple of 4" : ""));
    pl.algo = result.algo;
  }
};

gemm_state* make_gemm_state(int ordinal) {
  backend::device_guard const guard(ordinal);
  auto state = std::make_unique<gemm_state>();
  state->ordinal = ordinal;
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
