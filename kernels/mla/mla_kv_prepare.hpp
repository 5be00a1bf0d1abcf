// mla_kv_prepare: what an MLA layer does to its new tokens between the kv_a projection and
// attention, in one pass: the latent's RMSNorm (kv_a_layernorm), the rope of the key and of every
// head's q_rope, and the write of [normed latent | roped key] into each token's pool slot. The
// same result as rmsnorm, apply_rope and mla_write_kv run in turn (norm.hpp, rope.hpp, mla.hpp):
// the CPU reference applies their per-element formulas (norm_params.hpp, rope_params.hpp) in one
// pass; on CUDA it is one launch instead of three, which at batch 1 is most of the cost (each of
// the three is a few microseconds of latency, not bandwidth). Optionally the same launch absorbs
// W_UK into the decode rows' q_nope (mla_kv_prepare_args::w_uk), which MLA decode needs next.
#pragma once

#include <cstdint>

#include "kernels/mla/mla.hpp"
#include "kernels/mla/mla_params.hpp"
#include "kernels/rope/rope.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// The arguments of one step. kv_a is only read: its key part is roped on the way to the pool.
struct mla_kv_prepare_args {
  tensor_view kv_a;         // [T, 576] bf16: latent [0, 512) then the key's rope part; rows
                            // contiguous, 16-byte aligned, row stride a multiple of 8
  tensor_view norm_weight;  // [512] bf16 contiguous: kv_a_layernorm's weight
  float eps = 0;            // kv_a_layernorm's epsilon (DeepSeek: 1e-6)
  tensor_view q_rope;       // [T, H, 64] bf16, roped in place (last dim contiguous); H may be 0
  tensor_view positions;    // [T] i32: each token's position (rope angle)
  tensor_view cos_sin;      // [max_positions, 64] f32 (yarn_fill_cos_sin_cache)
  kv_slots slots;           // where each token's row goes (mla_write_kv's rules)
  tensor_view kv_cache;     // [slots, 576] bf16
  // Optional, default views for none: the decode rows' absorbed query in the same launch,
  // q_absorbed[r, h, :] = q_nope[r, h, :] . w_uk[h] (fp32 sums, one bf16 rounding). The product
  // does not depend on the rest of the step, so on CUDA it costs a few CTAs beside it instead of a
  // launch of its own; at most mla_fold_w_uk_max_rows rows there.
  tensor_view q_nope;      // [R, H, 128] bf16, last dim contiguous, 16-byte aligned rows
  tensor_view w_uk;        // [H, 128, 512] bf16, rows contiguous and 16-byte aligned
  tensor_view q_absorbed;  // [R, H, 512] bf16, last dim contiguous
};

// Most rows whose q_nope . W_UK the CUDA kernel computes beside the step (each CTA holds a
// 128 x 128 tile of W_UK in registers and reuses it for every row).
inline constexpr std::int64_t mla_fold_w_uk_max_rows = 8;
inline constexpr std::int64_t mla_nope_dim = 128;  // qk_nope_head_dim of DeepSeek's MLA

// The absorb's params: rows x heads products of q_nope [128] by W_UK[h] [128, 512].
struct mla_absorb_params {
  bf16 const* q_nope = nullptr;  // [rows, heads, 128]
  std::int64_t q_row_stride = 0, q_head_stride = 0;
  bf16 const* w_uk = nullptr;  // [heads, 128, 512]
  std::int64_t w_head_stride = 0, w_row_stride = 0;
  bf16* out = nullptr;  // [rows, heads, 512]
  std::int64_t out_row_stride = 0, out_head_stride = 0;
  int rows = 0;
  int heads = 0;
};

// The params both backends run from: the rope's (q in place; k = the key source), the write's
// (slot source and pool; its segments' sources unused) and the norm's.
struct mla_kv_prepare_params {
  rope_params rope;
  kv_write_params write;
  bf16 const* latent = nullptr;  // kv_a rows, latent_stride apart
  std::int64_t latent_stride = 0;
  bf16 const* norm_weight = nullptr;
  float eps = 0;
  mla_absorb_params absorb;  // rows 0: none
};

namespace detail {

// Throws on a position outside the cos/sin cache or a slot outside the pool, before writing.
void mla_kv_prepare_cpu(mla_kv_prepare_params const& p, int page_size);
#if defined(LIGHTCORE_WITH_CUDA)
void mla_kv_prepare_cuda(mla_kv_prepare_params const& p, int page_size, int ordinal,
                         CUstream_st* stream);
// Defined in mla_kv_prepare.cuh, instantiated in instantiations/mla_kv_prepare_p1.cu.
template <class Layout>
void launch_mla_kv_prepare(mla_kv_prepare_params const& p, int num_sms, CUstream_st* stream);
#endif

// The checked params (the checks of rmsnorm, apply_rope and mla_write_kv on the same views).
inline mla_kv_prepare_params make_mla_kv_prepare_params(device where,
                                                        mla_kv_prepare_args const& a) {
  char const* const op = "mla_kv_prepare";
  LC_CHECK(a.kv_a.rank() == 2 && a.kv_a.size(1) == mla_kv_width,
           op << " needs kv_a [T, " << mla_kv_width << "] (latent then rope key); got " << a.kv_a);
  std::int64_t const t = a.kv_a.size(0);
  mla_kv_prepare_params p;
  p.rope = make_rope_params(where, a.q_rope, a.kv_a.slice(1, mla_latent_dim, mla_kv_width),
                            a.positions, a.cos_sin);
  auto const src =
      source_segment(a.kv_a.slice(1, 0, mla_latent_dim), t, mla_latent_dim, "kv_a's latent", op);
  p.latent = src.src;
  p.latent_stride = src.src_stride;
  LC_CHECK(a.norm_weight.type() == dtype::bf16 && a.norm_weight.rank() == 1 &&
               a.norm_weight.size(0) == mla_latent_dim && a.norm_weight.is_contiguous() &&
               aligned16(a.norm_weight.data()) && a.norm_weight.where() == where,
           op << " needs norm_weight as a contiguous, 16-byte aligned [" << mla_latent_dim
              << "] bf16 vector on " << where << "; got " << a.norm_weight);
  p.norm_weight = a.norm_weight.data_as<bf16>();
  p.eps = a.eps;
  p.write.tokens = t;
  auto const pool = pool_view(a.kv_cache, mla_kv_width, "kv_cache", op);
  p.write.pool_slots = pool.slots;
  p.write.segment[0].dst = pool.data;
  p.write.segment[0].dst_stride = pool.row_stride;
  LC_CHECK(a.kv_a.where() == where && a.kv_cache.where() == where,
           op << " on " << where << " needs every view there; kv_a is on " << a.kv_a.where()
              << ", kv_cache on " << a.kv_cache.where());
  fill_slot_source(p.write, where, a.slots, op);
  if (is_none(a.q_nope) && is_none(a.w_uk) && is_none(a.q_absorbed)) return p;

  LC_CHECK(a.q_nope.type() == dtype::bf16 && a.q_nope.rank() == 3 &&
               a.q_nope.size(2) == mla_nope_dim && a.q_nope.size(0) > 0 && a.q_nope.size(1) > 0,
           op << " needs q_nope as [rows, heads, " << mla_nope_dim << "] bf16 with rows > 0; got "
              << a.q_nope);
  std::int64_t const rows = a.q_nope.size(0), heads = a.q_nope.size(1);
  LC_CHECK(a.w_uk.type() == dtype::bf16 &&
               a.w_uk.shape() == (dims{heads, mla_nope_dim, mla_latent_dim}) &&
               a.w_uk.stride(2) == 1 && a.w_uk.stride(1) % 8 == 0 && a.w_uk.stride(0) % 8 == 0,
           op << " needs w_uk as [" << heads << ", " << mla_nope_dim << ", " << mla_latent_dim
              << "] bf16 with contiguous rows and strides that are multiples of 8; got " << a.w_uk);
  LC_CHECK(a.q_absorbed.type() == dtype::bf16 &&
               a.q_absorbed.shape() == (dims{rows, heads, mla_latent_dim}) &&
               a.q_absorbed.stride(2) == 1,
           op << " needs q_absorbed as [" << rows << ", " << heads << ", " << mla_latent_dim
              << "] bf16 with a contiguous last dim; got " << a.q_absorbed);
  LC_CHECK(a.q_nope.stride(2) == 1 && (heads == 1 || a.q_nope.stride(1) % 8 == 0) &&
               (rows == 1 || a.q_nope.stride(0) % 8 == 0) && aligned16(a.q_nope.data()) &&
               aligned16(a.w_uk.data()),
           op << " needs q_nope and w_uk 16-byte aligned with strides that are multiples of 8 "
                 "elements; got q_nope "
              << a.q_nope << " at " << a.q_nope.data() << ", w_uk at " << a.w_uk.data());
  LC_CHECK(a.q_nope.where() == where && a.w_uk.where() == where && a.q_absorbed.where() == where,
           op << " on " << where << " needs q_nope, w_uk and q_absorbed there; got "
              << a.q_nope.where() << ", " << a.w_uk.where() << ", " << a.q_absorbed.where());
  mla_absorb_params& b = p.absorb;
  b.q_nope = a.q_nope.data_as<bf16>();
  b.q_row_stride = a.q_nope.stride(0);
  b.q_head_stride = a.q_nope.stride(1);
  b.w_uk = a.w_uk.data_as<bf16>();
  b.w_head_stride = a.w_uk.stride(0);
  b.w_row_stride = a.w_uk.stride(1);
  b.out = static_cast<bf16*>(a.q_absorbed.data());
  b.out_row_stride = a.q_absorbed.stride(0);
  b.out_head_stride = a.q_absorbed.stride(1);
  b.rows = int(rows);
  b.heads = int(heads);
  return p;
}

}  // namespace detail

// Normalises the latent of kv_a, ropes its key and q_rope, and writes [latent | key] into each
// token's slot of kv_cache; with q_nope, w_uk and q_absorbed, also absorbs W_UK into the decode
// rows' queries (CUDA: up to mla_fold_w_uk_max_rows rows). The checks are those of the three ops it
// stands for; a position outside the cos/sin cache or a slot outside the pool is an error on the
// CPU backend (before anything is written) and, on CUDA, gives NaN rope values (as apply_rope) or a
// skipped write (as mla_write_kv). Ordered on `stream`.
template <class Layout = kv_layout<>, Backend B>
void mla_kv_prepare(B& backend, mla_kv_prepare_args const& a,
                    [[maybe_unused]] typename B::stream_type const& stream) {
  mla_kv_prepare_params const p = detail::make_mla_kv_prepare_params(backend.where(), a);
  if (p.write.tokens == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::mla_kv_prepare_cpu(p, Layout::page_size);
  } else {
    static_assert(B::kind == device_kind::cuda, "mla_kv_prepare: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::mla_kv_prepare_cuda(p, Layout::page_size, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda, "mla_kv_prepare on backend::cuda needs CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
