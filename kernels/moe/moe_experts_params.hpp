// moe experts: the params that the CPU reference and the CUDA kernels share, the workspace layout
// both use, and the tile constants the host checks against. Host code; no CUDA header.
//
// The routed experts of one MoE layer, after routing and alignment (moe.hpp):
//   h[r]   = gate_up[e] . x[t]            r = t * top_k + slot, e = topk_ids[r], fp32 accumulation
//   a[r]   = silu_and_mul_value(bf16(h[r][:I]), bf16(h[r][I:]))      bf16 [I]
//   y[r]   = bf16(weight[r] * (down[e] . a[r]))                      bf16 [H], fp32 accumulation
//   out[t] = bf16(sum over slot = 0..top_k-1 of y[t * top_k + slot])  fp32 sum, slot order
// FP8 (e4m3 weights with 128 x 128 block scales): x and a are quantised per token per 128 columns
// (quantize_per_token_group) before their GEMM, and each GEMM sums the 128-wide K blocks' fp32
// products times x_scale * w_scale, as gemm_fp8_block does. Slots whose expert is outside
// [0, experts) (another rank's, under expert parallelism) add nothing.
#pragma once

#include <cstdint>

#include "kernels/quant/quant_params.hpp"

namespace lightcore::kernels {

// How the expert weights are stored.
enum class moe_weight_format : std::uint8_t {
  bf16,       // gate_up [E, 2I, H] and down [E, H, I] bf16
  fp8_block,  // the same shapes in fp8_e4m3, with one f32 scale per 128 x 128 block
};

// The K width of one pipeline stage of the grouped GEMM, in bytes (64 bf16 or 128 fp8 values: one
// FP8 scale block) and the output tile widths: GEMM 1 makes 64 intermediate columns per CTA (64
// gate + 64 up weight rows), GEMM 2 128 hidden columns. H and I must be multiples of 128 (the FP8
// scale block; DeepSeek's H 2048/7168 and I 1408/2048/256 are).
inline constexpr std::int64_t moe_gemm_k_tile_bytes = 128;
inline constexpr std::int64_t moe_gemm_gate_up_tile_n = 64;
inline constexpr std::int64_t moe_gemm_down_tile_n = 128;
inline constexpr std::int64_t moe_experts_dim_multiple = 128;

// The Hopper (wgmma) grouped GEMMs for prefill-sized batches, bf16 and FP8, block_m 64 only; their
// output tiles are 128 intermediate columns (gate_up) and 256 hidden columns (down), so a GEMM
// whose N is not a multiple of its tile takes the mma.sync kernel. They run from
// moe_experts_wgmma_min_tokens tokens on (tokens; measured on R1 bf16, docs/perf/moe-experts.md:
// from T = 256 it is faster than mma.sync, 11% there; FP8 too, 9% at T = 256 on R1, 2.4x at
// 4096; below 256 not measured; decode sizes stay on mma.sync).
inline constexpr std::int64_t moe_gemm_wgmma_gate_up_tile_n = 128;
inline constexpr std::int64_t moe_gemm_wgmma_down_tile_n = 256;
inline constexpr std::int64_t moe_experts_wgmma_min_tokens = 256;

// Batches of at most this many tokens (bf16) take the weight-streaming kernels of moe_gemv.cuh:
// an expert then holds at most 4 rows (a token picks it at most once).
inline constexpr std::int64_t moe_experts_gemv_max_tokens = 4;

// The aligned block heights (moe_align's block_m) the grouped GEMM has tiles for.
inline constexpr bool moe_experts_block_m_supported(std::int64_t block_m) {
  return block_m == 64 || block_m == 128;
}

// Where each buffer lies in the workspace (byte offsets, each 256-byte aligned), and its size.
struct moe_experts_workspace_layout {
  std::int64_t intermediate = 0;         // bf16: bf16 [sorted_rows, I]: a, by sorted position
  std::int64_t routed_out = 0;           // bf16 [tokens * top_k, H]: y, by routed row r
  std::int64_t hidden_q = 0;             // FP8: fp8 [tokens, H], x quantised
  std::int64_t hidden_scales = 0;        // FP8: f32 [tokens, H / 128] row-major
  std::int64_t intermediate_q = 0;       // FP8: fp8 [sorted_rows, I], a quantised by GEMM 1
  std::int64_t intermediate_scales = 0;  // FP8: f32 [sorted_rows, I / 128] row-major
  std::int64_t bytes = 0;                // the total
};

inline constexpr std::int64_t moe_experts_workspace_alignment = 256;

constexpr moe_experts_workspace_layout make_moe_experts_workspace_layout(
    std::int64_t tokens, std::int64_t top_k, std::int64_t sorted_rows, std::int64_t hidden,
    std::int64_t inter, moe_weight_format format) {
  auto const up = [](std::int64_t b) {
    return (b + moe_experts_workspace_alignment - 1) / moe_experts_workspace_alignment *
           moe_experts_workspace_alignment;
  };
  moe_experts_workspace_layout l;
  std::int64_t at = 0;
  auto take = [&](std::int64_t bytes) {
    std::int64_t const where = at;
    at += up(bytes);
    return where;
  };
  // FP8: GEMM 1 writes the intermediate quantised (intermediate_q), never in bf16.
  if (format == moe_weight_format::bf16) l.intermediate = take(sorted_rows * inter * 2);
  l.routed_out = take(tokens * top_k * hidden * 2);
  if (format == moe_weight_format::fp8_block) {
    l.hidden_q = take(tokens * hidden);
    l.hidden_scales = take(tokens * (hidden / quant_group_size) * 4);
    l.intermediate_q = take(sorted_rows * inter);
    l.intermediate_scales = take(sorted_rows * (inter / quant_group_size) * 4);
  }
  l.bytes = at;
  return l;
}

// One moe_experts call, resolved from checked views. Plain data; element strides.
struct moe_experts_params {
  void const* hidden = nullptr;                   // [tokens, H] bf16, row stride hidden_ld
  std::int32_t const* topk_ids = nullptr;         // [tokens, top_k]
  float const* topk_weights = nullptr;            // [tokens, top_k]
  std::int32_t const* sorted_ids = nullptr;       // [sorted_capacity]: r, or rows (padding)
  std::int32_t const* expert_of_block = nullptr;  // [block_capacity]: -1 past the last block
  std::int32_t const* inverse = nullptr;          // [tokens, top_k]: sorted position or -1
  void const* gate_up = nullptr;                  // [E, 2I, H] (gate rows, then up rows)
  float const* gate_up_scales = nullptr;          // FP8: [E, ceil(2I/128), gate_up_scales_ld]
  void const* down = nullptr;                     // [E, H, I]
  float const* down_scales = nullptr;             // FP8: [E, ceil(H/128), down_scales_ld]
  void* out = nullptr;                            // [tokens, H] bf16, row stride out_ld
  void* workspace = nullptr;                      // make_moe_experts_workspace_layout(...).bytes
  std::int64_t tokens = 0, top_k = 0, experts = 0;
  std::int64_t hidden_size = 0;  // H, a multiple of 128
  std::int64_t inter = 0;        // I, a multiple of 128
  std::int64_t block_m = 0;      // 64 or 128
  std::int64_t sorted_capacity = 0, block_capacity = 0;
  std::int64_t hidden_ld = 0, out_ld = 0;
  std::int64_t gate_up_scales_ld = 0;  // gemm_fp8_weight_scale_ld(H)
  std::int64_t down_scales_ld = 0;     // gemm_fp8_weight_scale_ld(I)
  moe_weight_format format = moe_weight_format::bf16;
  // Tokens from which bf16 block_m 64 GEMMs take the wgmma kernel (tests and benchmarks move it
  // to compare the two kernels on the same inputs).
  std::int64_t wgmma_min_tokens = moe_experts_wgmma_min_tokens;
  // Tokens up to which bf16 GEMMs take the weight-streaming kernels (at most
  // moe_experts_gemv_max_tokens; tests set 0 to compare with the grouped GEMM).
  std::int64_t gemv_max_tokens = moe_experts_gemv_max_tokens;
  std::int64_t shared_experts = 0;  // moe_expert_weights::shared
};

// Which of the two grouped GEMMs a kernel runs.
enum class moe_gemm_stage : std::uint8_t {
  gate_up,  // A rows gathered from the tokens; SiLU-and-mul epilogue -> a, by sorted position
            // (FP8: quantised per 128 columns in the epilogue)
  down,     // A rows by sorted position; routed-weight epilogue -> y, by routed row
};

// One grouped GEMM over the aligned row blocks: block b (block_m rows) multiplies its rows by the
// weight of expert_of_block[b]; blocks of expert -1 exit at once. Plain data: passed by value.
struct moe_grouped_gemm_params {
  void const* a = nullptr;  // gate_up: [tokens, K] (row = r / top_k); down: [sorted, K]
  float const* a_scales =
      nullptr;              // FP8: a's per-128-column scales, row-major, row stride a_scales_ld
  void const* w = nullptr;  // [E, w_rows, K] (w_rows = 2I or H), K contiguous
  float const* w_scales = nullptr;  // FP8: [E, ceil(w_rows/128), w_scales_ld]
  // bf16 gate_up [sorted, n]; down [rows, n]. FP8 gate_up: the e4m3 codes [sorted, n] and their
  // per-128-column scales out_scales [sorted, n / 128] (row stride out_scales_ld floats), rows of
  // padding left unwritten in both (GEMM 2 does not read them).
  void* out = nullptr;
  float* out_scales = nullptr;
  std::int64_t out_scales_ld = 0;
  std::int32_t const* sorted_ids = nullptr;       // [blocks * block_m]
  std::int32_t const* expert_of_block = nullptr;  // [blocks]
  float const* topk_weights = nullptr;            // down: [rows]
  std::int64_t rows = 0;                          // tokens * top_k: sorted_ids holds it for padding
  std::int64_t top_k = 0;
  std::int64_t n = 0;                              // output columns: I (gate_up) or H (down)
  std::int64_t k = 0;                              // H (gate_up) or I (down)
  std::int64_t lda = 0, ldo = 0, a_scales_ld = 0;  // elements
  std::int64_t w_scales_ld = 0;                    // floats between scale rows
  std::int64_t blocks = 0;                         // grid size over row blocks (block capacity)
  std::int64_t block_m = 0;  // rows per aligned block (the grouped GEMMs take it as a template
                             // argument; the weight-streaming kernels read it here)
  std::int64_t experts = 0;  // weight stacks in w (the wgmma kernel's tensor map extent)
  // The last shared_experts stacks are hit by every token (folded shared experts): the decode
  // kernels prefetch their weights ahead of the routing (moe_gemv.cuh). 0: none known.
  std::int64_t shared_experts = 0;
};

// The combine: out[t] = bf16(sum of y[t * top_k + slot] over slots with inverse >= 0).
struct moe_combine_params {
  std::uint16_t const* routed_out = nullptr;  // [tokens * top_k, H] bf16 bits
  std::int32_t const* inverse = nullptr;      // [tokens * top_k]
  std::uint16_t* out = nullptr;               // [tokens, H] bf16 bits, row stride out_ld
  std::int64_t tokens = 0, top_k = 0, hidden = 0, out_ld = 0;
};

}  // namespace lightcore::kernels
