// mla: DeepSeek MLA's token-slot KV cache and absorbed decode attention.
//   - mla_write_kv / gqa_write_kv: write new tokens' KV rows into their pool slots (MLA: the
//     normalised latent and the roped key into one 576-wide row; GQA: k and v rows).
//   - mla_decode: per decode row, attention of q (q_nope already multiplied by W_UK, and q_rope)
//     over the row's latent cache rows as multi-query attention: keys are the 576-wide rows,
//     values their first 512. The [H, 512] result goes through W_UV afterwards: a GEMM, or on
//     CUDA at up to 8 rows of a split plan the merge itself (mla_decode_args::w_uv).
// The cache layout (page size, req_to_token) is described in kv_cache.hpp. On CUDA the decode is
// split-KV (flash-decoding) with a merge; its launch geometry depends on the batch size and the
// head count only (see plan_mla_decode), so one captured graph serves any mix of lengths.
#pragma once

#include <climits>
#include <cstdint>
#include <cstring>

#include "kernels/common/split_kv.hpp"
#include "kernels/mla/kv_cache.hpp"
#include "kernels/mla/mla_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// Where new tokens go: an explicit slot list, or positions of request rows through req_to_token.
struct kv_slots {
  tensor_view slots;         // [T] i32 slot ids; negative: padding, skipped
  tensor_view req_to_token;  // [requests, columns] i32 page ids (slot ids when the page size is 1)
  tensor_view req_rows;      // [T] i32 request row of each token
  tensor_view positions;     // [T] i32 position of each token in its request

  static kv_slots list(tensor_view const& slots) { return {slots, {}, {}, {}}; }
  static kv_slots table(tensor_view const& req_to_token, tensor_view const& req_rows,
                        tensor_view const& positions) {
    return {{}, req_to_token, req_rows, positions};
  }
  bool is_list() const noexcept { return slots.data() != nullptr || slots.rank() != 0; }
};

// The inputs and outputs of one absorbed decode step (q_len = 1).
struct mla_decode_args {
  tensor_view q_nope;        // [batch, heads, 512] bf16, q_nope x W_UK; last dim contiguous
  tensor_view q_rope;        // [batch, heads, 64] bf16, roped; last dim contiguous
  tensor_view kv_cache;      // [slots, 576] bf16 latent rows of one layer; last dim contiguous
  tensor_view req_to_token;  // [requests, columns] i32; last dim contiguous
  tensor_view req_rows;      // [batch] i32, each batch row's request row in req_to_token
  tensor_view seq_lens;      // [batch] i32 cached tokens per row, the new one included; 0: none
  tensor_view out;           // [batch, heads, 512] bf16; last dim contiguous; none: see w_uv
  tensor_view lse;           // [batch, heads] f32 contiguous, or a default view for none
  float softmax_scale = 0;   // scale of q.k, YaRN's mscale included
  // The output projection folded in (or default views): out_v[b, h, :] = out[b, h, :] . w_uv[h]^T
  // (out as bf16, fp32 sums). On CUDA the merge of a split plan computes it, one launch instead of
  // a merge and a batched GEMV, without writing out (which may then be a default view); see
  // mla_decode_folds_w_uv for where CUDA takes it.
  tensor_view w_uv;   // [heads, v_dim, 512] bf16, rows contiguous (v_dim a multiple of 8)
  tensor_view out_v;  // [batch, heads, v_dim] bf16; last dim contiguous
};

namespace detail {

void kv_write_cpu(kv_write_params const& p, int page_size);  // throws on a slot outside the pool
void mla_decode_cpu(mla_decode_params const& p, int page_size);  // throws on a bad table entry
#if defined(LIGHTCORE_WITH_CUDA)
int mla_multiprocessor_count(int ordinal);
void kv_write_cuda(kv_write_params const& p, int page_size, int ordinal, CUstream_st* stream);
void mla_decode_cuda(mla_decode_params const& p, int page_size, int ordinal, CUstream_st* stream);

// Defined in kv_write.cuh, mla_decode.cuh and mla_decode_wgmma.cuh, instantiated once per file in
// instantiations/.
template <class Layout>
void launch_kv_write(kv_write_params const& p, int num_sms, CUstream_st* stream);
template <class Layout>  // tiles of 16 heads (mla_decode_stream.cuh)
void launch_mla_decode_stream(mla_decode_params const& p, CUstream_st* stream);
template <class Layout>  // tiles of 64 heads on warpgroup MMA (mla_decode_wgmma.cuh)
void launch_mla_decode_wgmma(mla_decode_params const& p, CUstream_st* stream);
template <class Out>
void launch_mla_merge(mla_decode_params const& p, CUstream_st* stream);
template <class Out>  // the merge with W_UV folded in (mla_decode_params::w_uv)
void launch_mla_merge_project(mla_decode_params const& p, CUstream_st* stream);
#endif

inline bool is_none(tensor_view const& v) noexcept { return v.data() == nullptr && v.rank() == 0; }

inline bool aligned16(void const* ptr) noexcept {
  return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0;
}

// The bytes of the partial results a plan of `splits` needs (0 when it does not split).
inline std::int64_t mla_workspace_bytes(std::int64_t batch, std::int64_t heads, int splits) {
  return split_kv_workspace_bytes(batch * splits * heads, mla_latent_dim, splits);
}

inline void check_index_vector(tensor_view const& v, std::int64_t n, char const* what,
                               char const* op) {
  LC_CHECK(v.type() == dtype::i32 && v.rank() == 1 && v.size(0) == n && v.is_contiguous(),
           op << " needs " << what << " as a contiguous [" << n << "] i32 vector; got " << v);
  LC_CHECK(n == 0 || v.data() != nullptr, op << " got a null " << what);
}

inline void check_table(tensor_view const& t, char const* op) {
  LC_CHECK(t.type() == dtype::i32 && t.rank() == 2 && (t.size(1) <= 1 || t.stride(1) == 1) &&
               t.size(0) > 0 && t.size(1) > 0 && t.stride(0) >= t.size(1) && t.data() != nullptr,
           op << " needs req_to_token as a non-empty [requests, columns] i32 table with "
                 "contiguous rows; got "
              << t);
}

inline req_to_token_view table_view(tensor_view const& t) {
  return {static_cast<std::int32_t const*>(t.data()), t.size(0), t.size(1),
          t.size(0) == 1 ? t.size(1) : t.stride(0)};
}

// A [slots, width] bf16 pool view whose rows are 16-byte aligned.
inline kv_pool_view<bf16> pool_view(tensor_view const& pool, std::int64_t width, char const* what,
                                    char const* op) {
  LC_CHECK(pool.type() == dtype::bf16 && pool.rank() == 2 && pool.size(1) == width,
           op << " needs " << what << " as a [slots, " << width << "] bf16 pool; got " << pool);
  std::int64_t const stride = pool.size(0) <= 1 ? width : pool.stride(0);
  LC_CHECK(pool.size(0) > 0 && pool.data() != nullptr && pool.stride(1) == 1 && stride >= width &&
               stride % 8 == 0 && aligned16(pool.data()),
           op << " needs " << what
              << " non-empty with contiguous rows, a row stride that is a multiple of 8 "
                 "elements and a 16-byte aligned start; got "
              << pool << " at " << pool.data());
  return {static_cast<bf16*>(pool.data()), pool.size(0), width, stride};
}

// A [T, width] bf16 source of T tokens with 16-byte aligned rows.
inline kv_write_segment source_segment(tensor_view const& src, std::int64_t tokens,
                                       std::int64_t width, char const* what, char const* op) {
  LC_CHECK(
      src.type() == dtype::bf16 && src.rank() == 2 && src.size(0) == tokens && src.size(1) == width,
      op << " needs " << what << " as [" << tokens << ", " << width << "] bf16; got " << src);
  std::int64_t const stride = tokens <= 1 ? width : src.stride(0);
  LC_CHECK(tokens == 0 || (src.data() != nullptr && src.stride(1) == 1 && stride >= width &&
                           stride % 8 == 0 && aligned16(src.data())),
           op << " needs " << what
              << " with contiguous rows, a row stride that is a multiple of 8 elements and a "
                 "16-byte aligned start; got "
              << src << " at " << src.data());
  kv_write_segment s;
  s.src = static_cast<bf16 const*>(src.data());
  s.src_stride = stride;
  s.width = width;
  return s;
}

inline void fill_slot_source(kv_write_params& p, device where, kv_slots const& to, char const* op) {
  if (to.is_list()) {
    check_index_vector(to.slots, p.tokens, "slots", op);
    LC_CHECK(to.slots.where() == where,
             op << " on " << where << " needs the slots there; they are on " << to.slots.where());
    p.slots = static_cast<std::int32_t const*>(to.slots.data());
    return;
  }
  check_table(to.req_to_token, op);
  check_index_vector(to.req_rows, p.tokens, "req_rows", op);
  check_index_vector(to.positions, p.tokens, "positions", op);
  LC_CHECK(to.req_to_token.where() == where && to.req_rows.where() == where &&
               to.positions.where() == where,
           op << " on " << where << " needs req_to_token, req_rows and positions there; got "
              << to.req_to_token.where() << ", " << to.req_rows.where() << ", "
              << to.positions.where());
  p.table = table_view(to.req_to_token);
  p.req_rows = static_cast<std::int32_t const*>(to.req_rows.data());
  p.positions = static_cast<std::int32_t const*>(to.positions.data());
}

template <Backend B>
void run_kv_write([[maybe_unused]] B& backend, kv_write_params const& p,
                  [[maybe_unused]] int page_size,
                  [[maybe_unused]] typename B::stream_type const& stream) {
  if (p.tokens == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    kv_write_cpu(p, page_size);
  } else {
    static_assert(B::kind == device_kind::cuda, "kv writes: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    kv_write_cuda(p, page_size, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda, "kv writes on backend::cuda need CUDA");
#endif
  }
}

mla_decode_params make_mla_decode_params(device where, mla_decode_args const& a,
                                         mla_decode_plan const& plan, tensor_view const& workspace);

}  // namespace detail

// The split plan for `batch` rows of `heads` heads on a device with num_sms multiprocessors: the
// number of KV splits per row that best fills whole waves of tiles for long contexts (each tile
// is one CTA resident per SM), and the workspace it needs. It ignores the lengths on purpose.
inline mla_decode_plan plan_mla_decode(std::int64_t batch, std::int64_t heads, int num_sms) {
  LC_CHECK(batch >= 0 && heads > 0 && heads % 16 == 0 && num_sms > 0,
           "plan_mla_decode needs batch >= 0, heads a positive multiple of 16 and num_sms > 0; "
           "got batch "
               << batch << ", heads " << heads << ", num_sms " << num_sms);
  mla_decode_plan plan;
  if (batch == 0) return plan;
  std::int64_t const tiles = batch * (heads / mla_heads_per_tile(heads));
  // Time of the longest row ~ waves * (1 / splits + fixed cost of a tile); the fixed cost (loading
  // q, the pipeline's fill, the epilogue) is about one 64-token block of a 4096 context.
  constexpr double fixed_cost = 1.0 / 64;
  double best = 0;
  for (int s = 1; s <= mla_max_splits; ++s) {
    std::int64_t const waves = (tiles * s + num_sms - 1) / num_sms;
    double const cost = double(waves) * (1.0 / s + fixed_cost) * (s > 1 ? 1.02 : 1.0);  // merge
    if (s == 1 || cost < best) {
      best = cost;
      plan.num_splits = s;
    }
    if (tiles * s >= 4 * std::int64_t(num_sms)) break;  // more splits only add fixed costs
  }
  plan.workspace_bytes = detail::mla_workspace_bytes(batch, heads, plan.num_splits);
  return plan;
}

// The plan on the backend's device (the CPU reference does not split: num_splits 1).
template <Backend B>
mla_decode_plan plan_mla_decode(B& backend, std::int64_t batch, std::int64_t heads) {
  if constexpr (B::kind == device_kind::cpu) {
    (void)backend;
    return plan_mla_decode(batch, heads, 1);
  } else {
#if defined(LIGHTCORE_WITH_CUDA)
    return plan_mla_decode(batch, heads, detail::mla_multiprocessor_count(backend.where().index));
#else
    static_assert(B::kind != device_kind::cuda, "plan_mla_decode on backend::cuda needs CUDA");
#endif
  }
}

// Whether mla_decode on this backend folds W_UV (mla_decode_args::w_uv) into a decode of `batch`
// rows under `plan`: always on the CPU; on CUDA where the plan splits the rows (the merge then
// multiplies) and batch <= mla_fold_w_uv_max_batch (beyond, the GEMM's weight reuse wins).
template <Backend B>
bool mla_decode_folds_w_uv(B const&, mla_decode_plan const& plan, std::int64_t batch) noexcept {
  if constexpr (B::kind == device_kind::cpu) {
    return true;
  } else {
    return plan.num_splits > 1 && batch <= mla_fold_w_uv_max_batch;
  }
}

// Writes the MLA rows of T new tokens: latent [T, 512] bf16 (normalised compressed kv) into
// columns [0, 512) and k_rope [T, 64] bf16 (roped key) into [512, 576) of each token's slot of
// kv_cache [slots, 576] bf16. Rows of every view contiguous with 16-byte aligned starts. A slot
// outside the pool is an error on the CPU backend (checked before writing); the CUDA kernel
// skips it. Ordered on `stream`.
template <class Layout = kv_layout<>, Backend B>
void mla_write_kv(B& backend, tensor_view const& latent, tensor_view const& k_rope,
                  kv_slots const& to, tensor_view const& kv_cache,
                  typename B::stream_type const& stream) {
  char const* const op = "mla_write_kv";
  device const where = backend.where();
  LC_CHECK(latent.rank() == 2, op << " needs latent [T, 512]; got " << latent);
  kv_write_params p;
  p.tokens = latent.size(0);
  p.segments = 2;
  p.segment[0] = detail::source_segment(latent, p.tokens, mla_latent_dim, "latent", op);
  p.segment[1] = detail::source_segment(k_rope, p.tokens, mla_rope_dim, "k_rope", op);
  auto const pool = detail::pool_view(kv_cache, mla_kv_width, "kv_cache", op);
  p.pool_slots = pool.slots;
  p.segment[0].dst = pool.data;
  p.segment[1].dst = pool.data + mla_latent_dim;
  p.segment[0].dst_stride = p.segment[1].dst_stride = pool.row_stride;
  LC_CHECK(latent.where() == where && k_rope.where() == where && kv_cache.where() == where,
           op << " on " << where << " needs every view there; latent is on " << latent.where()
              << ", k_rope on " << k_rope.where() << ", kv_cache on " << kv_cache.where());
  detail::fill_slot_source(p, where, to, op);
  detail::run_kv_write(backend, p, Layout::page_size, stream);
}

// Writes the GQA rows of T new tokens: k and v [T, kv_heads, head_dim] bf16 (heads contiguous
// within a token) into k_cache and v_cache [slots, kv_heads, head_dim] bf16 at each token's slot.
// kv_heads * head_dim a multiple of 8. Same slot rules as mla_write_kv.
template <class Layout = kv_layout<>, Backend B>
void gqa_write_kv(B& backend, tensor_view const& k, tensor_view const& v, kv_slots const& to,
                  tensor_view const& k_cache, tensor_view const& v_cache,
                  typename B::stream_type const& stream) {
  char const* const op = "gqa_write_kv";
  device const where = backend.where();
  LC_CHECK(k.rank() == 3 && v.shape() == k.shape() && k_cache.rank() == 3 &&
               v_cache.shape() == k_cache.shape() && k_cache.size(1) == k.size(1) &&
               k_cache.size(2) == k.size(2) && k.size(1) * k.size(2) % 8 == 0,
           op << " needs k, v [T, kv_heads, head_dim] and k_cache, v_cache [slots, kv_heads, "
                 "head_dim] with kv_heads * head_dim a multiple of 8; got k "
              << k.shape() << ", v " << v.shape() << ", k_cache " << k_cache.shape() << ", v_cache "
              << v_cache.shape());
  std::int64_t const width = k.size(1) * k.size(2);
  // Heads contiguous within a token: each token is one row of kv_heads * head_dim.
  auto const rows = [&](tensor_view const& t, char const* what) {
    LC_CHECK(t.size(1) <= 1 || t.stride(1) == t.size(2),
             op << " needs the heads of " << what << " contiguous within a token; got " << t);
    return tensor_view(t.data(), t.type(), {t.size(0), width},
                       {t.size(0) <= 1 ? width : t.stride(0), 1}, t.where());
  };
  LC_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k_cache.stride(2) == 1 && v_cache.stride(2) == 1,
           op << " needs the head_dim of every view contiguous; got k " << k << ", v " << v
              << ", k_cache " << k_cache << ", v_cache " << v_cache);
  kv_write_params p;
  p.tokens = k.size(0);
  p.segments = 2;
  p.segment[0] = detail::source_segment(rows(k, "k"), p.tokens, width, "k", op);
  p.segment[1] = detail::source_segment(rows(v, "v"), p.tokens, width, "v", op);
  auto const kp = detail::pool_view(rows(k_cache, "k_cache"), width, "k_cache", op);
  auto const vp = detail::pool_view(rows(v_cache, "v_cache"), width, "v_cache", op);
  p.pool_slots = kp.slots;
  p.segment[0].dst = kp.data;
  p.segment[0].dst_stride = kp.row_stride;
  p.segment[1].dst = vp.data;
  p.segment[1].dst_stride = vp.row_stride;
  LC_CHECK(k.where() == where && v.where() == where && k_cache.where() == where &&
               v_cache.where() == where,
           op << " on " << where << " needs every view there; k is on " << k.where() << ", v on "
              << v.where() << ", k_cache on " << k_cache.where() << ", v_cache on "
              << v_cache.where());
  detail::fill_slot_source(p, where, to, op);
  detail::run_kv_write(backend, p, Layout::page_size, stream);
}

// out = softmax(scale * [q_nope, q_rope] . kv^T) kv[:, :512] per batch row over its first
// seq_lens[b] positions (a row of length 0 gives zeros and lse -inf), lse its natural-log
// normaliser. `plan` comes from plan_mla_decode for this batch size and head count on this
// backend, `workspace` is u8 of at least plan.workspace_bytes on the device, 256-byte aligned
// (a default view when it needs none). Table entries and lengths must address slots inside the
// pool: the CPU backend checks them; the CUDA kernel cannot, and reads a slot outside the pool as
// a zero row. Ordered on `stream`.
template <class Layout = kv_layout<>, Backend B>
void mla_decode(B& backend, mla_decode_args const& args, mla_decode_plan const& plan,
                tensor_view const& workspace,
                [[maybe_unused]] typename B::stream_type const& stream) {
  mla_decode_params const p =
      detail::make_mla_decode_params(backend.where(), args, plan, workspace);
  if (p.batch == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::mla_decode_cpu(p, Layout::page_size);
  } else {
    static_assert(B::kind == device_kind::cuda, "mla_decode: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::mla_decode_cuda(p, Layout::page_size, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda, "mla_decode on backend::cuda needs CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
