// quant: the CUDA kernel and its launcher. Only the files in instantiations/ include this; the
// dispatch (quant_cuda.cu) sees the declaration in quant.hpp alone.
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/common/pdl.cuh"
#include "kernels/common/vector_types.cuh"
#include "kernels/quant/quant.hpp"
#include "kernels/quant/quant_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <class In, class Out>
struct quant_traits {
  static constexpr int in_access_bytes = 16;  // ld.global.v4.b32: 8 bf16
  static constexpr int elems = in_access_bytes / int(sizeof(In));
  static constexpr int out_access_bytes = elems * int(sizeof(Out));  // 8 fp8
  // One group (128 elements) per half-warp: 16 lanes of 8 elements, the amax reduced in 4 shuffles.
  static constexpr int lanes_per_group = int(quant_group_size) / elems;
  static constexpr int groups_per_warp = 32 / lanes_per_group;
  // Groups each half-warp loads before it reduces and stores: bytes in flight to cover HBM latency.
  static constexpr int unroll = 2;
  static constexpr int threads = 256;
  // Resident blocks per SM that the grid is sized for: 6 of 256 threads (75% occupancy) leave 42
  // registers per thread; at the full 8 (32 registers) the unrolled loop spilled to the stack.
  static constexpr int blocks_per_sm = 6;
  static_assert(quant_group_size % elems == 0 && 32 % lanes_per_group == 0);
};

// Group index gi in [0, rows * cols / 128) names (m, g): row-major order, or row-fastest when the
// scales are k-major so that the scale stores of neighbouring half-warps are contiguous. Whole
// warps iterate together (the shuffles need every lane), lanes past the end only idle.
template <class In, class Out>
__global__ void __launch_bounds__(quant_traits<In, Out>::threads,
                                  quant_traits<In, Out>::blocks_per_sm)
    quant_kernel(quant_params<In, Out> const p, std::int64_t const groups) {
  pdl_enter();
  using traits = quant_traits<In, Out>;
  using in_array = reg_array<In, traits::elems>;
  using out_array = reg_array<Out, traits::elems>;
  using out_word = vector_word_t<traits::out_access_bytes>;
  int const lane = int(threadIdx.x) % traits::lanes_per_group;
  std::int64_t const slot = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) /
                            traits::lanes_per_group;  // this half-warp's first group
  std::int64_t const slots = std::int64_t(gridDim.x) * blockDim.x / traits::lanes_per_group;
  auto const groups_per_row32 = std::uint32_t(p.cols / quant_group_size);
  auto const rows32 = std::uint32_t(p.rows);
  std::int64_t const warp_slot = slot - slot % traits::groups_per_warp;  // uniform in the warp

  for (std::int64_t first = warp_slot; first < groups; first += slots * traits::unroll) {
    // Row and group as 32-bit values (M and K / 128 < 2^31: the host checks), which keeps the
    // unrolled loop within 42 registers without spilling.
    int row[traits::unroll], group[traits::unroll];
    uint4 in[traits::unroll];
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u) {
      std::int64_t const gi = slot + (first - warp_slot) + u * slots;
      row[u] = -1;
      group[u] = 0;
      if (gi >= groups) continue;
      // 32-bit division (the launcher checks that group indices fit): a 64-bit one is a long
      // subroutine, and it ran once per 8 elements per thread.
      auto const g32 = std::uint32_t(gi);
      row[u] = int(p.rows_fastest ? g32 % rows32 : g32 / groups_per_row32);
      group[u] = int(p.rows_fastest ? g32 / rows32 : g32 % groups_per_row32);
      std::int64_t const col = std::int64_t(group[u]) * quant_group_size + lane * traits::elems;
      in[u] = __ldg(reinterpret_cast<uint4 const*>(p.x + row[u] * p.x_stride + col));
    }
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u) {
      in_array x{};
      float amax = 0.0f;
      if (row[u] >= 0) {
        x = __builtin_bit_cast(in_array, in[u]);
#pragma unroll
        for (int e = 0; e < traits::elems; ++e) amax = quant_amax(amax, float(x.v[e]));
      }
#pragma unroll
      for (int offset = traits::lanes_per_group / 2; offset > 0; offset /= 2)
        amax = quant_amax(amax, __shfl_xor_sync(0xFFFF'FFFFu, amax, offset));
      if (row[u] < 0) continue;
      float const scale = quant_group_scale(amax);
      float const inverse = quant_inverse_scale(scale);
      out_array q;
      if constexpr (std::is_same_v<Out, fp8_e4m3>) {
        // Two values per conversion instruction (cvt.rn.satfinite.e4m3x2.f32): the same rounding
        // and saturation as fp8_e4m3(float) element by element, half the instructions.
#pragma unroll
        for (int e = 0; e < traits::elems; e += 2) {
          __nv_fp8x2_storage_t const pair = __nv_cvt_float2_to_fp8x2(
              make_float2(float(x.v[e]) * inverse, float(x.v[e + 1]) * inverse), __NV_SATFINITE,
              __NV_E4M3);
          q.v[e] = fp8_e4m3::from_bits(std::uint8_t(pair & 0xFFu));  // .x in the low byte
          q.v[e + 1] = fp8_e4m3::from_bits(std::uint8_t(pair >> 8));
        }
      } else {
#pragma unroll
        for (int e = 0; e < traits::elems; ++e) q.v[e] = quant_value<Out>(float(x.v[e]), inverse);
      }
      std::int64_t const col = std::int64_t(group[u]) * quant_group_size + lane * traits::elems;
      *reinterpret_cast<out_word*>(p.q + row[u] * p.q_stride + col) =
          __builtin_bit_cast(out_word, q);
      if (lane == 0)
        p.scales[row[u] * p.scale_row_stride + group[u] * p.scale_group_stride] = scale;
    }
  }
}

template <class In, class Out>
void launch_quantize_per_token_group(quant_params<In, Out> const& p, int num_sms,
                                     CUstream_st* stream) {
  using traits = quant_traits<In, Out>;
  std::int64_t const groups = p.rows * (p.cols / quant_group_size);
  if (groups == 0) return;
  LC_CHECK(groups < (std::int64_t(1) << 31),
           "quantize_per_token_group on CUDA handles fewer than "
           "2^31 groups of 128; got "
               << groups << " (M " << p.rows << ", K " << p.cols << ")");
  std::int64_t const threads_needed =
      (groups + traits::unroll - 1) / traits::unroll * traits::lanes_per_group;
  std::int64_t const max_blocks = std::int64_t(num_sms) * traits::blocks_per_sm;
  auto const blocks = unsigned(std::clamp<std::int64_t>(
      (threads_needed + traits::threads - 1) / traits::threads, 1, max_blocks));
  launch_pdl(quant_kernel<In, Out>, dim3(blocks), dim3(traits::threads), 0, stream, p, groups);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
