// gqa_decode: decode attention (one new token per row) of grouped-query attention over the
// token-slot KV cache of kv_cache.hpp (k and v pools [slots, kv_heads, head_dim], as gqa_write_kv
// writes them), for dense models with head dims 64 and 128 and groups 1..8. On CUDA it is split-KV
// (flash-decoding) with a merge; the launch geometry depends on the batch size, the heads and the
// device only (plan_gqa_decode), so one captured graph serves any mix of lengths.
#pragma once

#include <climits>
#include <cstdint>

#include "kernels/attention/gqa_decode_params.hpp"
#include "kernels/common/split_kv.hpp"
#include "kernels/mla/kv_cache.hpp"
#include "kernels/mla/mla.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// The inputs and outputs of one GQA decode step. Last dims contiguous, strides multiples of 8
// elements, starts 16-byte aligned.
struct gqa_decode_args {
  tensor_view q;             // [batch, q_heads, head_dim] bf16
  tensor_view k_cache;       // [slots, kv_heads, head_dim] bf16, heads contiguous within a slot
  tensor_view v_cache;       // [slots, kv_heads, head_dim] bf16, same shape as k_cache
  tensor_view req_to_token;  // [requests, columns] i32; last dim contiguous
  tensor_view req_rows;      // [batch] i32, each batch row's request row in req_to_token
  tensor_view seq_lens;      // [batch] i32 cached tokens per row, the new one included; 0: none
  tensor_view out;           // [batch, q_heads, head_dim] bf16
  tensor_view lse;           // [batch, q_heads] f32 contiguous, or a default view for none
  float softmax_scale = 0;   // scale of q.k, usually 1 / sqrt(head_dim); finite and > 0
};

namespace detail {

gqa_decode_params make_gqa_decode_params(device where, gqa_decode_args const& a,
                                         gqa_decode_plan const& plan, tensor_view const& workspace);
void gqa_decode_cpu(gqa_decode_params const& p, int page_size);  // throws on a bad table entry
#if defined(LIGHTCORE_WITH_CUDA)
int gqa_multiprocessor_count(int ordinal);
void gqa_decode_cuda(gqa_decode_params const& p, int page_size, int ordinal, CUstream_st* stream);

// Defined in gqa_decode.cuh (the decode, then the merge when it splits), instantiated once per
// file in instantiations/.
template <int HeadDim, class Layout>
void launch_gqa_decode(gqa_decode_params const& p, CUstream_st* stream);
#endif

// CTAs of the CUDA kernel resident on one SM, which the plan fills: its shared memory (3 stages
// of 64-token K and V blocks) is 57 KB at head_dim 64 and 107 KB at 128 (gqa_decode.cuh checks).
inline constexpr int gqa_decode_ctas_per_sm(std::int64_t head_dim) noexcept {
  return head_dim <= 64 ? 3 : 2;
}

// The bytes of the partial results a plan of `splits` needs (0 when it does not split).
inline std::int64_t gqa_decode_workspace_bytes(std::int64_t batch, std::int64_t q_heads,
                                               std::int64_t head_dim, int splits) {
  return split_kv_workspace_bytes(batch * splits * q_heads, head_dim, splits);
}

}  // namespace detail

// The split plan for `batch` rows on a device with num_sms multiprocessors: the KV splits per row
// that best fill whole waves of (row, kv head, split) CTAs for long contexts, and the workspace
// they need. It ignores the lengths on purpose (see the header comment).
inline gqa_decode_plan plan_gqa_decode(std::int64_t batch, std::int64_t q_heads,
                                       std::int64_t kv_heads, std::int64_t head_dim, int num_sms) {
  LC_CHECK(batch >= 0 && q_heads > 0 && kv_heads > 0 && head_dim > 0 && num_sms > 0,
           "plan_gqa_decode needs batch >= 0 and positive q_heads, kv_heads, head_dim, num_sms; "
           "got batch "
               << batch << ", q_heads " << q_heads << ", kv_heads " << kv_heads << ", head_dim "
               << head_dim << ", num_sms " << num_sms);
  gqa_decode_plan plan;
  if (batch == 0) return plan;
  std::int64_t const tiles = batch * kv_heads;
  std::int64_t const slots = std::int64_t(num_sms) * detail::gqa_decode_ctas_per_sm(head_dim);
  // Time of the longest row ~ waves * (1 / splits + a CTA's fixed cost: q's load, the pipeline's
  // fill, the epilogue, about one 64-token block of a 4096 context); the merge costs ~2%.
  constexpr double fixed_cost = 1.0 / 64;
  double best = 0;
  for (int s = 1; s <= gqa_decode_max_splits; ++s) {
    std::int64_t const waves = (tiles * s + slots - 1) / slots;
    double const cost = double(waves) * (1.0 / s + fixed_cost) * (s > 1 ? 1.02 : 1.0);
    if (s == 1 || cost < best) {
      best = cost;
      plan.num_splits = s;
    }
    if (tiles * s >= 2 * slots) break;  // more splits only add fixed costs
  }
  plan.workspace_bytes =
      detail::gqa_decode_workspace_bytes(batch, q_heads, head_dim, plan.num_splits);
  return plan;
}

// The plan on the backend's device (the CPU reference does not split: num_splits 1).
template <Backend B>
gqa_decode_plan plan_gqa_decode(B& backend, std::int64_t batch, std::int64_t q_heads,
                                std::int64_t kv_heads, std::int64_t head_dim) {
  if constexpr (B::kind == device_kind::cpu) {
    (void)backend;
    (void)plan_gqa_decode(batch, q_heads, kv_heads, head_dim, 1);  // the same argument checks
    return gqa_decode_plan{};
  } else {
#if defined(LIGHTCORE_WITH_CUDA)
    return plan_gqa_decode(batch, q_heads, kv_heads, head_dim,
                           detail::gqa_multiprocessor_count(backend.where().index));
#else
    static_assert(B::kind != device_kind::cuda, "plan_gqa_decode on backend::cuda needs CUDA");
#endif
  }
}

// out = softmax(scale * q . k^T) v per batch row and query head over the row's first seq_lens[b]
// positions, query head h reading kv head h / (q_heads / kv_heads) (a row of length 0 gives zeros
// and lse -inf); lse its natural-log normaliser. `plan` comes from plan_gqa_decode for these sizes
// on this backend; `workspace` is u8 of at least plan.workspace_bytes on the device, 256-byte
// aligned (a default view when it needs none). Table entries and lengths must address slots
// inside the pools: the CPU backend checks them; the CUDA kernel cannot, and reads a slot outside
// the pool as a zero row. Ordered on `stream`.
template <class Layout = kv_layout<>, Backend B>
void gqa_decode(B& backend, gqa_decode_args const& args, gqa_decode_plan const& plan,
                tensor_view const& workspace,
                [[maybe_unused]] typename B::stream_type const& stream) {
  gqa_decode_params const p =
      detail::make_gqa_decode_params(backend.where(), args, plan, workspace);
  if (p.batch == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::gqa_decode_cpu(p, Layout::page_size);
  } else {
    static_assert(B::kind == device_kind::cuda, "gqa_decode: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::gqa_decode_cuda(p, Layout::page_size, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda, "gqa_decode on backend::cuda needs CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
