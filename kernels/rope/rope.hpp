// rope: DeepSeek-V3/R1's rotary embedding of MLA's rope parts, in place: q's last 64 dims of each
// head and the latent row's last 64 (k), one shared key per token. Reproduces transformers'
// apply_rotary_pos_emb_interleave (config.rope_interleave = True, DeepSeek's default) element by
// element, including its output order: dim i < 32 receives pair i's first result and dim 32 + i its
// second (see rope_params.hpp), i.e. the rotated row stays de-interleaved, as the reference then
// concatenates it into query_states/key_states. cos/sin come from a cache built by yarn.hpp.
//
// Numerics: fp32 math on bf16 inputs and fp32 cos/sin, one bf16 rounding per output, the same
// bits on both backends. The reference instead rounds cos/sin to bf16 and computes
// q * cos + rotate_half(q) * sin in bf16 (products and sum each rounded) from an fp32 angle; this
// op is at least as accurate, and differs from that bf16-faithful path by a relative L2 of ~3e-3
// (bound used in the tests: 1e-2).
#pragma once

#include <cstdint>

#include "kernels/rope/rope_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

namespace detail {

// The backends' entry points; the arguments are checked by apply_rope() below.
void apply_rope_cpu(rope_params const& p);  // throws on a position outside the cache
// One 64-wide row: the pairs of `in` rotated into `out` (de-interleaved), which may be `in`; the
// CPU reference's per-row step, also used by other families' CPU references.
void rope_rotate_row_cpu(bf16 const* in, bf16* out, float const* cos_sin);
#if defined(LIGHTCORE_WITH_CUDA)
void apply_rope_cuda(rope_params const& p, int ordinal, CUstream_st* stream);

// The launch, defined in rope.cuh and instantiated once in instantiations/rope_bf16_d64.cu; the
// dispatch (rope_cuda.cu) sees only this declaration.
void launch_rope(rope_params const& p, CUstream_st* stream);
#endif

// Rows (q heads + the k row, over all tokens) must stay below this, so that the kernel indexes
// threads in 32 bits: 2^28 rows is 2M tokens at 128 heads.
inline constexpr std::int64_t rope_max_rows = std::int64_t(1) << 28;

inline rope_params make_rope_params(device where, tensor_view const& q, tensor_view const& k,
                                    tensor_view const& positions, tensor_view const& cos_sin) {
  LC_CHECK(q.type() == dtype::bf16 && k.type() == dtype::bf16,
           "apply_rope needs bf16 q_rope and k_rope; got " << q.type() << " and " << k.type());
  LC_CHECK(positions.type() == dtype::i32,
           "apply_rope needs i32 positions; got " << positions.type());
  LC_CHECK(cos_sin.type() == dtype::f32,
           "apply_rope needs an f32 cos/sin cache; got " << cos_sin.type());
  LC_CHECK(q.rank() == 3 && q.size(2) == rope_dim,
           "apply_rope needs q_rope of shape [tokens, heads, " << rope_dim << "]; got " << q);
  LC_CHECK(k.rank() == 2 && k.size(1) == rope_dim,
           "apply_rope needs k_rope of shape [tokens, " << rope_dim << "]; got " << k);
  LC_CHECK(cos_sin.rank() == 2 && cos_sin.size(1) == rope_dim && cos_sin.size(0) > 0,
           "apply_rope needs a cos/sin cache of shape [max_positions > 0, "
               << rope_dim << "] (cos then sin); got " << cos_sin);
  std::int64_t const tokens = q.size(0), heads = q.size(1);
  LC_CHECK(k.size(0) == tokens && positions.rank() == 1 && positions.size(0) == tokens,
           "apply_rope needs " << tokens << " tokens in k_rope and positions, as in q_rope "
                               << q.shape() << "; got k_rope " << k.shape() << " and positions "
                               << positions.shape());
  LC_CHECK(q.stride(2) == 1 && k.stride(1) == 1,
           "apply_rope needs the last dim of q_rope and k_rope contiguous; got strides "
               << q.strides() << " and " << k.strides());
  LC_CHECK(heads <= 1 || q.stride(1) >= rope_dim,
           "apply_rope needs q_rope's heads not to overlap: head stride "
               << q.stride(1) << " must be >= " << rope_dim);
  LC_CHECK(tokens <= 1 || q.stride(0) >= (heads - 1) * q.stride(1) + rope_dim,
           "apply_rope needs q_rope's tokens not to overlap: token stride "
               << q.stride(0) << " must be >= " << (heads - 1) * q.stride(1) + rope_dim);
  LC_CHECK(tokens <= 1 || k.stride(0) >= rope_dim,
           "apply_rope needs k_rope's tokens not to overlap: token stride "
               << k.stride(0) << " must be >= " << rope_dim);
  LC_CHECK(positions.is_contiguous() && cos_sin.is_contiguous(),
           "apply_rope needs contiguous positions and cos/sin cache; got " << positions << " and "
                                                                           << cos_sin);
  LC_CHECK(q.where() == where && k.where() == where && positions.where() == where &&
               cos_sin.where() == where,
           "apply_rope on " << where << " needs every view there; q_rope is on " << q.where()
                            << ", k_rope on " << k.where() << ", positions on " << positions.where()
                            << ", cos/sin cache on " << cos_sin.where());
  LC_CHECK(tokens * (heads + 1) < rope_max_rows,
           "apply_rope of " << tokens << " tokens x " << heads << " heads exceeds " << rope_max_rows
                            << " rows (heads + 1 per token)");
  rope_params p;
  p.q = static_cast<bf16*>(q.data());
  p.k = static_cast<bf16*>(k.data());
  p.positions = static_cast<std::int32_t const*>(positions.data());
  p.cos_sin = static_cast<float const*>(cos_sin.data());
  p.tokens = tokens;
  p.q_heads = heads;
  p.q_token_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.k_token_stride = k.stride(0);
  p.max_positions = cos_sin.size(0);
  if (tokens > 0) {
    LC_CHECK(p.q != nullptr && p.k != nullptr && p.positions != nullptr && p.cos_sin != nullptr,
             "apply_rope of " << tokens << " tokens got a null pointer");
  }
  return p;
}

}  // namespace detail

// Rotates q_rope ([tokens, heads, 64] bf16, e.g. the last 64 of each head's 192 in q; last dim
// contiguous, other strides free) and k_rope ([tokens, 64] bf16, the rope part of the latent row)
// in place by the angles of positions ([tokens] i32), reading rows of cos_sin ([max_positions,
// 64] f32, from yarn_fill_cos_sin_cache). q_rope and k_rope must not share elements (not checked).
// A position outside [0, max_positions) is an error on the CPU backend (checked before anything
// is written); the CUDA kernel cannot throw, reads nothing outside the cache and writes NaN to
// that token's rows instead. Ordered on `stream` (the CPU backend runs it before returning).
template <Backend B>
void apply_rope(B& backend, tensor_view const& q_rope, tensor_view const& k_rope,
                tensor_view const& positions, tensor_view const& cos_sin,
                [[maybe_unused]] typename B::stream_type const& stream) {
  rope_params const p =
      detail::make_rope_params(backend.where(), q_rope, k_rope, positions, cos_sin);
  if (p.tokens == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::apply_rope_cpu(p);  // host work runs when issued: no stream to order on
  } else {
    static_assert(B::kind == device_kind::cuda, "apply_rope: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::apply_rope_cuda(p, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "apply_rope on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
