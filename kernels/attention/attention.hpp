// attention: varlen causal prefill attention and DeepSeek MLA prefill (decompressed).
//   - prefill_attention: FlashAttention-style causal attention of a ragged batch's new tokens
//     over their whole sequences (cached prefix + new), qk/v head dims (192, 128) for MLA (the
//     64-wide rope part of the key read once per token and broadcast over the heads), (128, 128)
//     and (64, 64) for GQA with groups 1..8; on CUDA the first two run on Hopper's warpgroup MMA
//     (prefill_wgmma.cuh), (64, 64) on mma.sync (prefill.cuh). Launch geometry depends on the token
//     counts, the batch size and the heads only (each CTA finds its request on the device), so it
//     can be captured in a CUDA graph and replayed for any lengths with the same totals.
//   - mla_prefill: gathers the latent rows of each request's whole sequence from the token pool
//     (kv_cache.hpp), decompresses them with two GEMMs through W_UK and W_UV (kv_b_proj) into
//     per-head k_nope and v, and runs prefill_attention with the latent's rope key broadcast.
#pragma once

#include <climits>
#include <cstdint>

#include "kernels/attention/attention_params.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/mla/kv_cache.hpp"
#include "kernels/mla/mla.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// The inputs and outputs of one varlen prefill (see prefill_params for the definition). Every
// view's last dimension is contiguous; token and head strides are multiples of 8 elements and the
// starts 16-byte aligned.
struct prefill_args {
  tensor_view q;             // [T, heads_q, qk_dim] bf16
  tensor_view k;             // [S, heads_k, qk_dim] bf16, or [S, heads_k, qk_dim - 64] with k_rope
  tensor_view k_rope;        // [S, 64] bf16 shared by all heads, or a default view for none
  tensor_view v;             // [S, heads_k, v_dim] bf16
  tensor_view cu_seqlens_q;  // [batch + 1] i32: 0, then running sums of new tokens; last <= T
  tensor_view cu_seqlens_k;  // [batch + 1] i32: 0, then running sums of sequence lengths; <= S
  tensor_view out;           // [T, heads_q, v_dim] bf16; rows past cu_seqlens_q[batch] untouched
  tensor_view lse;           // [T, heads_q] f32 contiguous, or a default view for none
  float softmax_scale = 0;   // scale of q.k
};

// The inputs and outputs of one MLA prefill step over a ragged batch.
struct mla_prefill_args {
  tensor_view q;             // [T, heads, 192] bf16: q_nope (128) | q_rope (64, roped)
  tensor_view kv_cache;      // [slots, 576] bf16 latent rows of one layer (the new tokens written)
  tensor_view req_to_token;  // [requests, columns] i32
  tensor_view req_rows;      // [batch] i32: each request's row in req_to_token
  tensor_view cu_seqlens_q;  // [batch + 1] i32 over the new tokens (rows of q)
  tensor_view cu_seqlens_k;  // [batch + 1] i32 over the whole sequences (prefix + new)
  tensor_view w_uk;          // [heads, 128, 512] bf16: k_nope[s, h] = w_uk[h] . latent[s, :512]
  tensor_view w_uv;          // [heads, 128, 512] bf16: v[s, h] = w_uv[h] . latent[s, :512]
  tensor_view out;           // [T, heads, 128] bf16
  tensor_view lse;           // [T, heads] f32, or a default view for none
  std::int64_t kv_tokens = 0;  // rows decompressed, >= cu_seqlens_k[batch] (a fixed bound keeps
                               // one captured graph valid for any lengths)
  float softmax_scale = 0;     // 1 / sqrt(192) times YaRN's mscale^2 for DeepSeek-V3
};

namespace detail {

prefill_params make_prefill_params(device where, prefill_args const& a);
latent_gather_params make_latent_gather_params(device where, mla_prefill_args const& a,
                                               tensor_view const& dst);
void prefill_cpu(prefill_params const& p);  // throws on inconsistent cu_seqlens
void latent_gather_cpu(latent_gather_params const& p, int page_size);  // throws on bad slots
#if defined(LIGHTCORE_WITH_CUDA)
void prefill_cuda(prefill_params const& p, int ordinal, CUstream_st* stream);
void latent_gather_cuda(latent_gather_params const& p, int page_size, int ordinal,
                        CUstream_st* stream);

// Defined in prefill.cuh, prefill_wgmma.cuh and latent_gather.cuh, instantiated once per file in
// instantiations/.
template <int QkDim, int VDim>
void launch_prefill(prefill_params const& p, CUstream_st* stream);
template <int QkDim, int VDim>
void launch_prefill_wgmma(prefill_params const& p, CUstream_st* stream);
template <class Layout>
void launch_latent_gather(latent_gather_params const& p, CUstream_st* stream);
#endif

template <Backend B>
void run_prefill(B& backend, prefill_params const& p,
                 [[maybe_unused]] typename B::stream_type const& stream) {
  if (p.batch == 0 || p.total_q == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    (void)backend;
    prefill_cpu(p);
  } else {
    static_assert(B::kind == device_kind::cuda, "prefill_attention: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    prefill_cuda(p, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda, "prefill_attention on backend::cuda needs CUDA");
#endif
  }
}

inline std::int64_t align256(std::int64_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace detail

// Where mla_prefill's workspace puts its parts (byte offsets) and how large it must be: the
// gathered latent rows [kv_tokens, 576], k_nope and v [kv_tokens, heads, 128] bf16, then the
// GEMM's workspace (gemm_workspace_bytes).
struct mla_prefill_workspace {
  std::int64_t latent = 0, k_nope = 0, v = 0, gemm = 0, bytes = 0;
};

inline mla_prefill_workspace mla_prefill_workspace_layout(std::int64_t kv_tokens,
                                                          std::int64_t heads) {
  LC_CHECK(kv_tokens >= 0 && heads > 0,
           "mla_prefill_workspace_layout needs kv_tokens >= 0 and heads > 0; got kv_tokens "
               << kv_tokens << ", heads " << heads);
  mla_prefill_workspace w;
  std::int64_t const per_head = prefill_mla_qk_dim - prefill_mla_rope_dim;  // 128
  w.k_nope = detail::align256(kv_tokens * mla_kv_width * 2);
  w.v = w.k_nope + detail::align256(kv_tokens * heads * per_head * 2);
  w.gemm = w.v + detail::align256(kv_tokens * heads * prefill_mla_v_dim * 2);
  w.bytes = w.gemm + gemm_workspace_bytes;
  return w;
}

// out = causal softmax(scale * q k^T) v over a ragged batch (see prefill_args). The CPU backend
// checks cu_seqlens (starting at 0, non-decreasing, within T and S, len_k >= len_q per request)
// before writing; the CUDA kernel reads them on the device and cannot. Ordered on `stream`.
template <Backend B>
void prefill_attention(B& backend, prefill_args const& args,
                       typename B::stream_type const& stream) {
  prefill_params const p = detail::make_prefill_params(backend.where(), args);
  detail::run_prefill(backend, p, stream);
}

// DeepSeek MLA prefill: gather the latent rows of every request's sequence (positions 0 ..
// len_k - 1 through req_to_token, page size Layout::page_size), decompress them (k_nope =
// latent[:, :512] . W_UK^T, v = latent[:, :512] . W_UV^T per head, bf16 results of fp32
// accumulation), then prefill_attention with q [T, heads, 192], k = k_nope | latent[:, 512:576]
// and v. `workspace` is u8 on the device, 256-byte aligned, of at least
// mla_prefill_workspace_layout(kv_tokens, heads).bytes. The CPU backend checks the table entries
// (slots inside the pool); the CUDA gather reads a slot outside the pool as a zero row.
template <class Layout = kv_layout<>, Backend B>
void mla_prefill(B& backend, gemm_context<B>& gemm_ctx, mla_prefill_args const& a,
                 tensor_view const& workspace, typename B::stream_type const& stream) {
  char const* const op = "mla_prefill";
  device const where = backend.where();
  LC_CHECK(a.q.rank() == 3 && a.q.size(2) == prefill_mla_qk_dim,
           op << " needs q [T, heads, " << prefill_mla_qk_dim << "]; got " << a.q);
  std::int64_t const heads = a.q.size(1), per_head = prefill_mla_qk_dim - prefill_mla_rope_dim;
  LC_CHECK(a.kv_tokens >= 0 && a.kv_tokens <= INT32_MAX,
           op << " needs kv_tokens in [0, 2^31); got " << a.kv_tokens);
  dims const want_w{heads, per_head, mla_latent_dim};
  LC_CHECK(a.w_uk.type() == dtype::bf16 && a.w_uv.type() == dtype::bf16 &&
               a.w_uk.shape() == want_w && a.w_uv.shape() == want_w,
           op << " needs w_uk and w_uv bf16 " << want_w << "; got w_uk " << a.w_uk << ", w_uv "
              << a.w_uv);
  auto const ws = mla_prefill_workspace_layout(a.kv_tokens, heads);
  LC_CHECK(workspace.type() == dtype::u8 && workspace.rank() == 1 &&
               workspace.size(0) >= ws.bytes && workspace.data() != nullptr &&
               reinterpret_cast<std::uintptr_t>(workspace.data()) % 256 == 0 &&
               workspace.where() == where,
           op << " needs a u8 workspace of at least " << ws.bytes << " bytes on " << where
              << ", 256-byte aligned (mla_prefill_workspace_layout); got " << workspace << " on "
              << workspace.where() << " at " << workspace.data());
  auto* const base = static_cast<unsigned char*>(workspace.data());
  std::int64_t const s = a.kv_tokens;
  tensor_view const latent(base + ws.latent, dtype::bf16, {s, mla_kv_width}, where);
  tensor_view const k_nope(base + ws.k_nope, dtype::bf16, {s, heads, per_head}, where);
  tensor_view const v(base + ws.v, dtype::bf16, {s, heads, prefill_mla_v_dim}, where);
  tensor_view const gemm_ws(base + ws.gemm, dtype::u8, {gemm_workspace_bytes}, where);

  prefill_args pa;
  pa.q = a.q;
  pa.k = k_nope;
  pa.k_rope = latent.slice(1, mla_latent_dim, mla_kv_width);
  pa.v = v;
  pa.cu_seqlens_q = a.cu_seqlens_q;
  pa.cu_seqlens_k = a.cu_seqlens_k;
  pa.out = a.out;
  pa.lse = a.lse;
  pa.softmax_scale = a.softmax_scale;
  // Every check before the first launch, so that a bad argument leaves nothing half done.
  prefill_params const pp = detail::make_prefill_params(where, pa);
  latent_gather_params const gp = detail::make_latent_gather_params(where, a, latent);
  if (pp.batch == 0 || pp.total_q == 0) return;

  if constexpr (B::kind == device_kind::cpu) {
    detail::latent_gather_cpu(gp, Layout::page_size);
  } else {
    static_assert(B::kind == device_kind::cuda, "mla_prefill: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::latent_gather_cuda(gp, Layout::page_size, where.index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda, "mla_prefill on backend::cuda needs CUDA");
#endif
  }
  if (s > 0) {
    // One GEMM per weight when its heads are contiguous ([heads * 128, 512] as an nn.Linear
    // weight: N = heads * 128 fills the GPU far better than a batch of heads), else a batch over
    // the heads with the latent shared (batch stride 0) and C strided into [S, heads, 128].
    tensor_view const x = latent.slice(1, 0, mla_latent_dim);
    auto const decompress = [&](tensor_view const& w, tensor_view const& c) {
      if (w.is_contiguous()) {
        tensor_view const w2(w.data(), dtype::bf16, {heads * per_head, mla_latent_dim}, where);
        tensor_view const c2(c.data(), dtype::bf16, {s, heads * per_head}, where);
        gemm(backend, gemm_ctx, x, w2, c2, gemm_ws, stream, gemm_weight_options());
      } else {
        tensor_view const xb(x.data(), dtype::bf16, {heads, s, mla_latent_dim}, {0, x.stride(0), 1},
                             where);
        gemm(backend, gemm_ctx, xb, w, c.transpose(0, 1), gemm_ws, stream, gemm_weight_options());
      }
    };
    decompress(a.w_uk, k_nope);
    decompress(a.w_uv, v);
  }
  detail::run_prefill(backend, pp, stream);
}

}  // namespace lightcore::kernels
