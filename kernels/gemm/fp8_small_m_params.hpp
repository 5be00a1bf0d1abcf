// gemm, FP8 block-scaled at small M (decode): the params of the weight-streaming CUDA kernel, the
// tile constants the host and the kernel share, and which problems it takes. Host code; no CUDA
// header.
//
// Where cuBLASLt's block-scaled kernels reach only 0.1-0.75 of the HBM copy ceiling on
// DeepSeek-R1's decode shapes (M <= 128, the product is a stream of the weight), this kernel
// streams the weight once through registers, takes the tokens from shared memory, multiplies with
// mma.sync e4m3 tensor core instructions (m16n8k32: 16 weight rows x 8 tokens x 32 K) and applies
// DeepSeek's scales per 128-wide K block in fp32. When N is too small to give every SM work, K is
// split over the CTAs of a thread-block cluster, which sum their partial tiles through distributed
// shared memory in a fixed order: one launch, no workspace, deterministic.
#pragma once

#include <cstdint>

#include "kernels/gemm/gemm_params.hpp"

namespace lightcore::kernels {

// The largest token count the kernel takes: 16 tiles of 8 tokens (the n8 operand of the MMA).
inline constexpr std::int64_t gemm_fp8_small_m_max_m = 128;
// Weight rows that one warp owns (the MMA's m16): N must be a multiple of it.
inline constexpr std::int64_t gemm_fp8_small_m_row_tile = 16;

// C[M, N] bf16 = sum over 128-wide K blocks kb of (x[:, kb] . w[:, kb]^T) * x_scale * w_scale.
// Plain data, passed by value to the kernel. Every pointer 16-byte aligned and every row stride a
// multiple of 16 bytes (the kernel moves 16-byte vectors; gemm_fp8_small_m_supported checks).
struct fp8_small_m_params {
  std::uint8_t const* x = nullptr;   // [M, K] fp8_e4m3 codes, row stride ldx
  float const* x_scales = nullptr;   // [K/128, M] contiguous: scale of x(i, 128g..) at g * M + i
  std::uint8_t const* w = nullptr;   // [N, K] fp8_e4m3 codes, row stride ldw
  float const* w_scales = nullptr;   // [ceil(N/128), K/128], row stride w_scales_ld
  std::uint16_t* c = nullptr;        // [M, N] bf16 bits, row stride ldc
  std::int64_t m = 0, n = 0, k = 0;  // M <= 128 a multiple of 4, N a multiple of 16, K of 128
  std::int64_t ldx = 0, ldw = 0, ldc = 0;  // elements between rows
  std::int64_t w_scales_ld = 0;            // gemm_fp8_weight_scale_ld(K)
};

// Whether the small-M kernel takes problem p (an FP8 block-scaled problem as check_gemm_fp8_args
// builds it): M <= 128 (and a multiple of 4), N a multiple of 16, every operand 16-byte aligned
// with row strides a multiple of 16 bytes (x, w) or 8 elements (C). Problems it refuses go to
// cuBLASLt.
inline bool gemm_fp8_small_m_supported(gemm_problem const& p) {
  auto aligned = [](void const* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  return p.batch == 1 && p.a_type == dtype::fp8_e4m3 && p.b_type == dtype::fp8_e4m3 &&
         p.c_type == dtype::bf16 && p.layout == b_layout::n_by_k && p.m > 0 &&
         p.m <= gemm_fp8_small_m_max_m && p.m % gemm_fp8_m_multiple == 0 && p.n > 0 &&
         p.n % gemm_fp8_small_m_row_tile == 0 && p.k > 0 && p.k % gemm_fp8_block_size == 0 &&
         aligned(p.a) && aligned(p.b) && aligned(p.c) && aligned(p.a_scales) &&
         aligned(p.b_scales) && p.lda % 16 == 0 && p.ldb % 16 == 0 && p.ldc % 8 == 0;
}

}  // namespace lightcore::kernels
