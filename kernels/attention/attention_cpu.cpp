// attention: the argument checks, and the CPU references: the latent gather (a copy) and the
// varlen causal prefill in fp32, one (query, head) at a time with a plain two-pass softmax.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention/attention.hpp"

namespace lightcore::kernels::detail {
namespace {

bool is_supported_dims(std::int64_t qk, std::int64_t v) {
  return (qk == prefill_mla_qk_dim && v == prefill_mla_v_dim) || (qk == 128 && v == 128) ||
         (qk == 64 && v == 64);
}

// A [rows, heads, dim] bf16 view with a contiguous last dim, token and head strides multiples of
// 8 elements and a 16-byte aligned start (16-byte vector accesses on the GPU).
void check_heads_view(tensor_view const& t, char const* what, char const* op) {
  LC_CHECK(t.type() == dtype::bf16 && t.rank() == 3,
           op << " needs " << what << " as a rank-3 bf16 [tokens, heads, dim] view; got " << t);
  if (t.numel() == 0) return;
  bool const ok = t.data() != nullptr && aligned16(t.data()) && t.stride(2) == 1 &&
                  (t.size(1) == 1 || t.stride(1) % 8 == 0) &&
                  (t.size(0) == 1 || t.stride(0) % 8 == 0);
  LC_CHECK(ok, op << " needs " << what
                  << " with a contiguous last dim, token and head strides that are multiples of "
                     "8 elements and a 16-byte aligned start; got "
                  << t << " at " << t.data());
}

std::int64_t token_stride(tensor_view const& t) {
  return t.size(0) == 1 ? t.size(1) * t.stride(1) : t.stride(0);
}

}  // namespace

prefill_params make_prefill_params(device where, prefill_args const& a) {
  char const* const op = "prefill_attention";
  check_heads_view(a.q, "q", op);
  check_heads_view(a.k, "k", op);
  check_heads_view(a.v, "v", op);
  check_heads_view(a.out, "out", op);
  std::int64_t const t = a.q.size(0), hq = a.q.size(1), qk = a.q.size(2);
  std::int64_t const s = a.k.size(0), hk = a.k.size(1), vd = a.v.size(2);
  bool const has_rope = !is_none(a.k_rope);
  std::int64_t const rope = has_rope ? prefill_mla_rope_dim : 0;
  LC_CHECK(is_supported_dims(qk, vd),
           op << " supports (qk_dim, v_dim) (192, 128), (128, 128) and (64, 64); got (" << qk
              << ", " << vd << ")");
  LC_CHECK(
      !has_rope || qk == prefill_mla_qk_dim,
      op << " takes a broadcast k_rope only with qk_dim " << prefill_mla_qk_dim << "; got " << qk);
  LC_CHECK(a.k.size(2) == qk - rope && a.v.shape() == (dims{s, hk, vd}),
           op << " needs k [S, heads_k, " << qk - rope << "] and v [S, heads_k, " << vd
              << "] of one S and heads_k" << (has_rope ? " (k_rope holds the last 64 dims)" : "")
              << "; got k " << a.k.shape() << ", v " << a.v.shape());
  LC_CHECK(a.out.shape() == (dims{t, hq, vd}),
           op << " needs out [" << t << ", " << hq << ", " << vd << "]; got " << a.out.shape());
  LC_CHECK(hk > 0 && hq % hk == 0 && hq / hk >= 1 && hq / hk <= prefill_max_group,
           op << " needs heads_q a multiple of heads_k with a group of 1.." << prefill_max_group
              << "; got heads_q " << hq << ", heads_k " << hk);
  LC_CHECK(hq <= 65535 && t < (std::int64_t(1) << 31) && s < (std::int64_t(1) << 31),
           op << " supports up to 65535 heads and T, S below 2^31; got heads " << hq << ", T " << t
              << ", S " << s);
  if (has_rope) {
    LC_CHECK(a.k_rope.type() == dtype::bf16 && a.k_rope.rank() == 2 && a.k_rope.size(0) == s &&
                 a.k_rope.size(1) == rope,
             op << " needs k_rope [" << s << ", " << rope << "] bf16; got " << a.k_rope);
    LC_CHECK(s == 0 || (a.k_rope.data() != nullptr && aligned16(a.k_rope.data()) &&
                        a.k_rope.stride(1) == 1 && (s == 1 || a.k_rope.stride(0) % 8 == 0)),
             op << " needs k_rope with a contiguous last dim, a token stride that is a multiple "
                   "of 8 elements and a 16-byte aligned start; got "
                << a.k_rope << " at " << a.k_rope.data());
  }
  LC_CHECK(a.cu_seqlens_q.rank() == 1 && a.cu_seqlens_q.size(0) >= 1,
           op << " needs cu_seqlens_q [batch + 1] i32; got " << a.cu_seqlens_q);
  std::int64_t const batch = a.cu_seqlens_q.size(0) - 1;
  LC_CHECK(batch <= INT32_MAX, op << " supports up to 2^31 - 1 requests; got " << batch);
  check_index_vector(a.cu_seqlens_q, batch + 1, "cu_seqlens_q", op);
  check_index_vector(a.cu_seqlens_k, batch + 1, "cu_seqlens_k", op);
  bool const has_lse = !is_none(a.lse);
  if (has_lse)
    LC_CHECK(a.lse.type() == dtype::f32 && a.lse.shape() == (dims{t, hq}) &&
                 a.lse.is_contiguous() && (t == 0 || a.lse.data() != nullptr),
             op << " needs lse as a contiguous [" << t << ", " << hq
                << "] f32 tensor, or a default view for none; got " << a.lse);
  LC_CHECK(std::isfinite(a.softmax_scale) && a.softmax_scale > 0,
           op << " needs a finite positive softmax_scale; got " << a.softmax_scale);
  for (auto const* v : {&a.q, &a.k, &a.v, &a.out, &a.cu_seqlens_q, &a.cu_seqlens_k})
    LC_CHECK(v->where() == where, op << " on " << where << " needs every view there; got " << *v
                                     << " on " << v->where());
  if (has_rope)
    LC_CHECK(a.k_rope.where() == where,
             op << " on " << where << " needs k_rope there; it is on " << a.k_rope.where());
  if (has_lse)
    LC_CHECK(a.lse.where() == where,
             op << " on " << where << " needs lse there; it is on " << a.lse.where());

  prefill_params p;
  p.q = static_cast<bf16 const*>(a.q.data());
  p.q_token_stride = token_stride(a.q);
  p.q_head_stride = a.q.stride(1);
  p.k = static_cast<bf16 const*>(a.k.data());
  p.k_token_stride = token_stride(a.k);
  p.k_head_stride = a.k.stride(1);
  p.k_rope = has_rope ? static_cast<bf16 const*>(a.k_rope.data()) : nullptr;
  p.k_rope_token_stride = has_rope ? (s == 1 ? rope : a.k_rope.stride(0)) : 0;
  p.v = static_cast<bf16 const*>(a.v.data());
  p.v_token_stride = token_stride(a.v);
  p.v_head_stride = a.v.stride(1);
  p.cu_seqlens_q = static_cast<std::int32_t const*>(a.cu_seqlens_q.data());
  p.cu_seqlens_k = static_cast<std::int32_t const*>(a.cu_seqlens_k.data());
  p.out = static_cast<bf16*>(a.out.data());
  p.out_token_stride = token_stride(a.out);
  p.out_head_stride = a.out.stride(1);
  p.lse = has_lse ? static_cast<float*>(a.lse.data()) : nullptr;
  p.softmax_scale = a.softmax_scale;
  p.batch = int(batch);
  p.total_q = t;
  p.total_k = s;
  p.heads_q = int(hq);
  p.heads_k = int(hk);
  p.qk_dim = int(qk);
  p.v_dim = int(vd);
  p.rope_dim = int(rope);
  return p;
}

latent_gather_params make_latent_gather_params(device where, mla_prefill_args const& a,
                                               tensor_view const& dst) {
  char const* const op = "mla_prefill";
  auto const pool = pool_view(a.kv_cache, mla_kv_width, "kv_cache", op);
  check_table(a.req_to_token, op);
  std::int64_t const batch = a.cu_seqlens_k.rank() == 1 ? a.cu_seqlens_k.size(0) - 1 : -1;
  LC_CHECK(batch >= 0, op << " needs cu_seqlens_k [batch + 1] i32; got " << a.cu_seqlens_k);
  check_index_vector(a.req_rows, batch, "req_rows", op);
  for (auto const* v : {&a.kv_cache, &a.req_to_token, &a.req_rows, &a.w_uk, &a.w_uv})
    LC_CHECK(v->where() == where, op << " on " << where << " needs every view there; got " << *v
                                     << " on " << v->where());
  latent_gather_params p;
  p.kv = {pool.data, pool.slots, pool.width, pool.row_stride};
  p.table = table_view(a.req_to_token);
  p.req_rows = static_cast<std::int32_t const*>(a.req_rows.data());
  p.cu_seqlens_k = static_cast<std::int32_t const*>(a.cu_seqlens_k.data());
  p.dst = static_cast<bf16*>(dst.data());
  p.dst_stride = mla_kv_width;
  p.rows = dst.size(0);
  p.batch = int(batch);
  return p;
}

namespace {

// cu_seqlens must start at 0, never decrease, end within `total`: checked before anything is
// written.
void check_cu_seqlens(std::int32_t const* cu, int batch, std::int64_t total, char const* what,
                      char const* op) {
  LC_CHECK(cu[0] == 0, op << ": " << what << "[0] is " << cu[0] << "; it must be 0");
  for (int b = 0; b < batch; ++b)
    LC_CHECK(cu[b + 1] >= cu[b], op << ": " << what << " decreases at request " << b << " ("
                                    << cu[b] << " then " << cu[b + 1] << ")");
  LC_CHECK(cu[batch] <= total,
           op << ": " << what << "[batch] is " << cu[batch] << ", past the " << total << " rows");
}

}  // namespace

void latent_gather_cpu(latent_gather_params const& p, int page_size) {
  char const* const op = "mla_prefill";
  check_cu_seqlens(p.cu_seqlens_k, p.batch, p.rows, "cu_seqlens_k (against kv_tokens)", op);
  std::vector<std::int64_t> slots(std::size_t(p.rows), -1);
  for (int b = 0; b < p.batch; ++b) {
    std::int32_t const row = p.req_rows[b], len = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    LC_CHECK(row >= 0 && row < p.table.rows && (len + page_size - 1) / page_size <= p.table.columns,
             op << ": request " << b << " has request row " << row << " and length " << len
                << "; req_to_token is [" << p.table.rows << ", " << p.table.columns
                << "] at page size " << page_size);
    for (std::int32_t j = 0; j < len; ++j) {
      std::int64_t const slot =
          std::int64_t(p.table.data[row * p.table.row_stride + j / page_size]) * page_size +
          j % page_size;
      LC_CHECK(slot >= 0 && slot < p.kv.slots,
               op << ": request " << b << " position " << j << " is in slot " << slot
                  << ", outside the pool of " << p.kv.slots << " slots");
      slots[std::size_t(p.cu_seqlens_k[b] + j)] = slot;
    }
  }
  for (std::int64_t r = 0; r < p.rows; ++r) {
    bf16* dst = p.dst + r * p.dst_stride;
    std::int64_t const slot = slots[std::size_t(r)];
    for (std::int64_t d = 0; d < mla_kv_width; ++d)
      dst[d] = slot < 0 ? bf16(0.0f) : p.kv.row(slot)[d];
  }
}

void prefill_cpu(prefill_params const& p) {
  char const* const op = "prefill_attention";
  check_cu_seqlens(p.cu_seqlens_q, p.batch, p.total_q, "cu_seqlens_q", op);
  check_cu_seqlens(p.cu_seqlens_k, p.batch, p.total_k, "cu_seqlens_k", op);
  for (int b = 0; b < p.batch; ++b) {
    std::int32_t const lq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    std::int32_t const lk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    LC_CHECK(lk >= lq, op << ": request " << b << " has " << lq << " new tokens but a sequence of "
                          << lk << "; the sequence includes the new tokens (len_k >= len_q)");
  }
  float const neg_inf = -std::numeric_limits<float>::infinity();
  int const group = p.heads_q / p.heads_k, main = p.qk_dim - p.rope_dim;
  std::vector<float> q(std::size_t(p.qk_dim)), s, o(std::size_t(p.v_dim));
  for (int b = 0; b < p.batch; ++b) {
    std::int64_t const q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    std::int64_t const lq = p.cu_seqlens_q[b + 1] - q0, lk = p.cu_seqlens_k[b + 1] - k0;
    std::int64_t const prefix = lk - lq;
    for (std::int64_t i = 0; i < lq; ++i) {
      std::int64_t const visible = prefix + i + 1;  // keys 0 .. prefix + i
      for (int h = 0; h < p.heads_q; ++h) {
        int const hk = h / group;
        bf16 const* qp = p.q + (q0 + i) * p.q_token_stride + h * p.q_head_stride;
        for (int d = 0; d < p.qk_dim; ++d) q[std::size_t(d)] = float(qp[d]);
        s.assign(std::size_t(visible), 0.0f);
        float m = neg_inf;
        for (std::int64_t j = 0; j < visible; ++j) {
          bf16 const* kp = p.k + (k0 + j) * p.k_token_stride + hk * p.k_head_stride;
          float acc = 0.0f;
          for (int d = 0; d < main; ++d) acc += q[std::size_t(d)] * float(kp[d]);
          if (p.rope_dim > 0) {
            bf16 const* rp = p.k_rope + (k0 + j) * p.k_rope_token_stride;
            for (int d = 0; d < p.rope_dim; ++d) acc += q[std::size_t(main + d)] * float(rp[d]);
          }
          s[std::size_t(j)] = acc * p.softmax_scale;
          m = std::fmax(m, s[std::size_t(j)]);
        }
        float l = 0.0f;
        std::fill(o.begin(), o.end(), 0.0f);
        for (std::int64_t j = 0; j < visible; ++j) {
          float const e = std::exp(s[std::size_t(j)] - m);
          l += e;
          bf16 const* vp = p.v + (k0 + j) * p.v_token_stride + hk * p.v_head_stride;
          for (int d = 0; d < p.v_dim; ++d) o[std::size_t(d)] += e * float(vp[d]);
        }
        bf16* out = p.out + (q0 + i) * p.out_token_stride + h * p.out_head_stride;
        for (int d = 0; d < p.v_dim; ++d) out[d] = bf16(visible > 0 ? o[std::size_t(d)] / l : 0.0f);
        if (p.lse != nullptr)
          p.lse[(q0 + i) * p.heads_q + h] = visible > 0 ? m + std::log(l) : neg_inf;
      }
    }
  }
}

}  // namespace lightcore::kernels::detail
