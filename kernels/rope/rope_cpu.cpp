// rope: the CPU reference, a plain loop over rows and pairs applying rope_rotate_pair (the same
// per-pair math the CUDA kernel applies). Every position is checked before anything is written.
#include "kernels/rope/rope.hpp"

namespace lightcore::kernels::detail {
// All inputs are read before the first output is written: the output order (de-interleaved)
// differs from the input order (interleaved pairs), and out may be in.
void rope_rotate_row_cpu(bf16 const* in, bf16* out, float const* cos_sin) {
  float re[rope_pairs], im[rope_pairs];
  for (int i = 0; i < rope_pairs; ++i) {
    rope_pair_result const r =
        rope_rotate_pair(in[2 * i], in[2 * i + 1], cos_sin[i], cos_sin[rope_pairs + i]);
    re[i] = r.re;
    im[i] = r.im;
  }
  for (int i = 0; i < rope_pairs; ++i) {
    out[i] = bf16(re[i]);
    out[rope_pairs + i] = bf16(im[i]);
  }
}

void apply_rope_cpu(rope_params const& p) {
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    std::int32_t const pos = p.positions[t];
    LC_CHECK(0 <= pos && pos < p.max_positions,
             "apply_rope: position " << pos << " of token " << t << " is outside the cos/sin cache"
                                     << " (allowed 0.." << p.max_positions - 1 << ")");
  }
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    float const* cos_sin = p.cos_sin + std::int64_t(p.positions[t]) * rope_dim;
    for (std::int64_t h = 0; h < p.q_heads; ++h) {
      bf16* const q = p.q + t * p.q_token_stride + h * p.q_head_stride;
      rope_rotate_row_cpu(q, q, cos_sin);
    }
    bf16* const k = p.k + t * p.k_token_stride;
    rope_rotate_row_cpu(k, k, cos_sin);
  }
}

}  // namespace lightcore::kernels::detail
