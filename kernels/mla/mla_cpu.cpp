// mla: the decode arguments' checks, and the CPU references: the KV write (a copy), the fused
// KV preparation (the norm and rope families' CPU row steps, then the write) and
// the absorbed decode in fp32, one (row, head) at a time with a plain two-pass softmax.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/mla/mla.hpp"
#include "kernels/mla/mla_kv_prepare.hpp"
#include "kernels/norm/norm.hpp"
#include "kernels/rope/rope.hpp"

namespace lightcore::kernels::detail {
namespace {

// The slot of position pos of request row `row` for a runtime page size: the same formula as
// kv_layout<P>::slot, so that the reference serves every page size the kernels are built for.
std::int64_t slot_of(req_to_token_view const& t, std::int64_t row, std::int64_t pos, int page) {
  return std::int64_t(t.data[row * t.row_stride + pos / page]) * page + pos % page;
}

// Every token's slot (negative: padding), checked before anything is written: a token outside
// the table or a slot outside the pool is an error naming it.
std::vector<std::int64_t> kv_write_slots(kv_write_params const& p, int page_size) {
  std::vector<std::int64_t> slots(std::size_t(p.tokens));
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    std::int64_t slot = 0;
    if (p.slots != nullptr) {
      slot = p.slots[t];
    } else {
      std::int32_t const row = p.req_rows[t], pos = p.positions[t];
      LC_CHECK(row >= 0 && row < p.table.rows && pos >= 0 && pos / page_size < p.table.columns,
               "kv write: token " << t << " names request row " << row << " position " << pos
                                  << ", outside req_to_token [" << p.table.rows << ", "
                                  << p.table.columns << "] at page size " << page_size);
      slot = slot_of(p.table, row, pos, page_size);
    }
    LC_CHECK(slot < p.pool_slots, "kv write: token " << t << " goes to slot " << slot
                                                     << ", outside the pool of " << p.pool_slots
                                                     << " slots (negative slots are padding)");
    slots[std::size_t(t)] = slot;
  }
  return slots;
}

}  // namespace

void mla_kv_prepare_cpu(mla_kv_prepare_params const& p, int page_size) {
  rope_params const& r = p.rope;
  for (std::int64_t t = 0; t < r.tokens; ++t)
    LC_CHECK(0 <= r.positions[t] && r.positions[t] < r.max_positions,
             "mla_kv_prepare: position " << r.positions[t] << " of token " << t
                                         << " is outside the cos/sin cache (allowed 0.."
                                         << r.max_positions - 1 << ")");
  std::vector<std::int64_t> const slots = kv_write_slots(p.write, page_size);
  kv_write_segment const& pool = p.write.segment[0];
  for (std::int64_t t = 0; t < r.tokens; ++t) {
    float const* cos_sin = r.cos_sin + std::int64_t(r.positions[t]) * rope_dim;
    for (std::int64_t h = 0; h < r.q_heads; ++h) {
      bf16* const q = r.q + t * r.q_token_stride + h * r.q_head_stride;
      rope_rotate_row_cpu(q, q, cos_sin);
    }
    std::int64_t const slot = slots[std::size_t(t)];
    if (slot < 0) continue;  // padding: nothing written
    bf16* const row = pool.dst + slot * pool.dst_stride;
    rmsnorm_row_cpu(p.latent + t * p.latent_stride, row, p.norm_weight, mla_latent_dim, p.eps);
    rope_rotate_row_cpu(r.k + t * r.k_token_stride, row + mla_latent_dim, cos_sin);
  }
  mla_absorb_params const& a = p.absorb;
  std::vector<float> q(mla_nope_dim), acc(mla_latent_dim);
  for (int row = 0; row < a.rows; ++row) {
    for (int h = 0; h < a.heads; ++h) {
      bf16 const* const qn = a.q_nope + row * a.q_row_stride + h * a.q_head_stride;
      for (std::int64_t k = 0; k < mla_nope_dim; ++k) q[std::size_t(k)] = float(qn[k]);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (std::int64_t k = 0; k < mla_nope_dim; ++k) {
        bf16 const* const w = a.w_uk + h * a.w_head_stride + k * a.w_row_stride;
        for (std::int64_t n = 0; n < mla_latent_dim; ++n)
          acc[std::size_t(n)] += q[std::size_t(k)] * float(w[n]);
      }
      bf16* const out = a.out + row * a.out_row_stride + h * a.out_head_stride;
      for (std::int64_t n = 0; n < mla_latent_dim; ++n) out[n] = bf16(acc[std::size_t(n)]);
    }
  }
}

mla_decode_params make_mla_decode_params(device where, mla_decode_args const& a,
                                         mla_decode_plan const& plan,
                                         tensor_view const& workspace) {
  char const* const op = "mla_decode";
  bool const has_out = !is_none(a.out), folds_w_uv = !is_none(a.w_uv);
  LC_CHECK(has_out || folds_w_uv,
           op << " needs out, or w_uv and out_v (the output projection folded in)");
  LC_CHECK(a.q_nope.type() == dtype::bf16 && a.q_rope.type() == dtype::bf16 &&
               (!has_out || a.out.type() == dtype::bf16),
           op << " needs bf16 q_nope, q_rope and out; got " << a.q_nope.type() << ", "
              << a.q_rope.type() << ", " << a.out.type());
  LC_CHECK(a.q_nope.rank() == 3 && a.q_nope.size(2) == mla_latent_dim,
           op << " needs q_nope [batch, heads, " << mla_latent_dim << "]; got " << a.q_nope);
  std::int64_t const batch = a.q_nope.size(0), heads = a.q_nope.size(1);
  LC_CHECK(a.q_rope.shape() == (dims{batch, heads, mla_rope_dim}),
           op << " needs q_rope [" << batch << ", " << heads << ", " << mla_rope_dim << "]; got "
              << a.q_rope);
  LC_CHECK(!has_out || a.out.shape() == a.q_nope.shape(),
           op << " needs out " << a.q_nope.shape() << " like q_nope; got " << a.out);
  if (folds_w_uv) {
    LC_CHECK(a.w_uv.type() == dtype::bf16 && a.w_uv.rank() == 3 && a.w_uv.size(0) == heads &&
                 a.w_uv.size(2) == mla_latent_dim && a.w_uv.size(1) > 0 &&
                 a.w_uv.size(1) % 8 == 0 && a.w_uv.stride(2) == 1,
             op << " needs w_uv as [" << heads << ", v_dim, " << mla_latent_dim
                << "] bf16 with v_dim a positive multiple of 8 and contiguous rows; got "
                << a.w_uv);
    LC_CHECK(a.out_v.type() == dtype::bf16 &&
                 a.out_v.shape() == (dims{batch, heads, a.w_uv.size(1)}) && a.out_v.stride(2) == 1,
             op << " needs out_v as [" << batch << ", " << heads << ", " << a.w_uv.size(1)
                << "] bf16 with a contiguous last dim; got " << a.out_v);
  } else {
    LC_CHECK(is_none(a.out_v), op << " got out_v without w_uv");
  }
  LC_CHECK(heads > 0 && heads % 16 == 0 && heads <= 1024 && batch <= INT32_MAX,
           op << " supports heads a multiple of 16 up to 1024 (16 and 128 for DeepSeek) and batch "
                 "up to 2^31 - 1; got heads "
              << heads << ", batch " << batch);
  bool const has_lse = !is_none(a.lse);
  if (has_lse)
    LC_CHECK(a.lse.type() == dtype::f32 && a.lse.shape() == (dims{batch, heads}) &&
                 a.lse.is_contiguous() && (batch == 0 || a.lse.data() != nullptr),
             op << " needs lse as a contiguous [" << batch << ", " << heads
                << "] f32 tensor, or a default view for none; got " << a.lse);
  LC_CHECK(plan.num_splits >= 1 && plan.num_splits <= mla_max_splits &&
               plan.workspace_bytes >= mla_workspace_bytes(batch, heads, plan.num_splits),
           op << " got a plan of " << plan.num_splits << " splits and " << plan.workspace_bytes
              << " workspace bytes that does not fit batch " << batch << ", heads " << heads
              << " (splits 1.." << mla_max_splits << ", from plan_mla_decode)");

  mla_decode_params p;
  p.batch = int(batch);
  p.heads = int(heads);
  p.q_len = 1;
  p.softmax_scale = a.softmax_scale;
  p.num_splits = plan.num_splits;
  if (batch == 0) return p;

  LC_CHECK(std::isfinite(a.softmax_scale) && a.softmax_scale > 0,
           op << " needs a finite positive softmax_scale; got " << a.softmax_scale);
  for (auto const* v : {&a.q_nope, &a.q_rope, &a.out}) {
    if (v == &a.out && !has_out) continue;
    bool const ok = v->data() != nullptr && aligned16(v->data()) && v->stride(2) == 1 &&
                    (heads == 1 || v->stride(1) % 8 == 0) && (batch == 1 || v->stride(0) % 8 == 0);
    LC_CHECK(ok, op << " needs q_nope, q_rope and out with a contiguous last dim, batch and head "
                       "strides that are multiples of 8 elements and a 16-byte aligned start; got "
                    << *v << " at " << v->data());
  }
  auto const pool = pool_view(a.kv_cache, mla_kv_width, "kv_cache", op);
  check_table(a.req_to_token, op);
  check_index_vector(a.req_rows, batch, "req_rows", op);
  check_index_vector(a.seq_lens, batch, "seq_lens", op);
  for (auto const* v : {&a.q_nope, &a.q_rope, &a.kv_cache, &a.req_to_token, &a.req_rows,
                        &a.seq_lens, &a.out, &a.w_uv, &a.out_v})
    LC_CHECK(is_none(*v) || v->where() == where, op << " on " << where
                                                    << " needs every view there; got " << *v
                                                    << " on " << v->where());
  if (folds_w_uv)
    LC_CHECK(a.w_uv.data() != nullptr && a.out_v.data() != nullptr,
             op << " got a null w_uv or out_v");
  if (has_lse)
    LC_CHECK(a.lse.where() == where,
             op << " on " << where << " needs lse there; it is on " << a.lse.where());

  p.q_nope = static_cast<bf16 const*>(a.q_nope.data());
  p.q_rope = static_cast<bf16 const*>(a.q_rope.data());
  p.q_nope_batch_stride = a.q_nope.stride(0);
  p.q_nope_head_stride = a.q_nope.stride(1);
  p.q_nope_query_stride = a.q_nope.stride(0);  // q_len 1: the next query is the next row
  p.q_rope_batch_stride = a.q_rope.stride(0);
  p.q_rope_head_stride = a.q_rope.stride(1);
  p.q_rope_query_stride = a.q_rope.stride(0);
  p.kv = {pool.data, pool.slots, pool.width, pool.row_stride};
  p.table = table_view(a.req_to_token);
  p.req_rows = static_cast<std::int32_t const*>(a.req_rows.data());
  p.seq_lens = static_cast<std::int32_t const*>(a.seq_lens.data());
  if (has_out) {
    p.out = static_cast<bf16*>(a.out.data());
    p.out_batch_stride = a.out.stride(0);
    p.out_head_stride = a.out.stride(1);
    p.out_query_stride = a.out.stride(0);
  }
  if (folds_w_uv) {
    p.w_uv = static_cast<bf16 const*>(a.w_uv.data());
    p.w_uv_head_stride = a.w_uv.stride(0);
    p.w_uv_row_stride = a.w_uv.stride(1);
    p.v_dim = int(a.w_uv.size(1));
    p.out_v = static_cast<bf16*>(a.out_v.data());
    p.out_v_batch_stride = a.out_v.stride(0);
    p.out_v_head_stride = a.out_v.stride(1);
  }
  p.lse = has_lse ? static_cast<float*>(a.lse.data()) : nullptr;
  if (plan.num_splits > 1) {
    auto const partials =
        carve_split_kv_workspace(workspace, where, plan.workspace_bytes,
                                 batch * plan.num_splits * heads, mla_latent_dim, op);
    p.partial_out = partials.out;
    p.partial_lse = partials.lse;
  }
  return p;
}

void kv_write_cpu(kv_write_params const& p, int page_size) {
  std::vector<std::int64_t> const slots = kv_write_slots(p, page_size);
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (slots[std::size_t(t)] < 0) continue;
    for (int s = 0; s < p.segments; ++s) {
      kv_write_segment const& g = p.segment[s];
      bf16 const* src = g.src + t * g.src_stride;
      bf16* dst = g.dst + slots[std::size_t(t)] * g.dst_stride;
      for (std::int64_t i = 0; i < g.width; ++i) dst[i] = src[i];
    }
  }
}

void mla_decode_cpu(mla_decode_params const& p, int page_size) {
  // Every table entry the lengths reach must name a slot in the pool: checked before writing.
  std::vector<std::vector<std::int64_t>> slots(std::size_t(p.batch));
  for (int b = 0; b < p.batch; ++b) {
    std::int32_t const row = p.req_rows[b], len = p.seq_lens[b];
    LC_CHECK(row >= 0 && row < p.table.rows && len >= 0 &&
                 (len + page_size - 1) / page_size <= p.table.columns,
             "mla_decode: batch row " << b << " has request row " << row << " and length " << len
                                      << "; req_to_token is [" << p.table.rows << ", "
                                      << p.table.columns << "] at page size " << page_size);
    for (std::int32_t j = 0; j < len; ++j) {
      std::int64_t const slot = slot_of(p.table, row, j, page_size);
      LC_CHECK(slot >= 0 && slot < p.kv.slots,
               "mla_decode: batch row " << b << " position " << j << " is in slot " << slot
                                        << ", outside the pool of " << p.kv.slots << " slots");
      slots[std::size_t(b)].push_back(slot);
    }
  }
  float const neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> q(mla_kv_width), s, o(mla_latent_dim);
  std::vector<bf16> latent(mla_latent_dim);
  for (int b = 0; b < p.batch; ++b) {
    auto const& rows = slots[std::size_t(b)];
    for (int qi = 0; qi < p.q_len; ++qi) {
      for (int h = 0; h < p.heads; ++h) {
        bf16 const* qn = p.q_nope + b * p.q_nope_batch_stride + qi * p.q_nope_query_stride +
                         h * p.q_nope_head_stride;
        bf16 const* qr = p.q_rope + b * p.q_rope_batch_stride + qi * p.q_rope_query_stride +
                         h * p.q_rope_head_stride;
        for (std::int64_t d = 0; d < mla_latent_dim; ++d) q[std::size_t(d)] = float(qn[d]);
        for (std::int64_t d = 0; d < mla_rope_dim; ++d)
          q[std::size_t(mla_latent_dim + d)] = float(qr[d]);
        s.assign(rows.size(), 0.0f);
        float m = neg_inf;
        for (std::size_t j = 0; j < rows.size(); ++j) {
          bf16 const* k = p.kv.row(rows[j]);
          float acc = 0.0f;
          for (std::int64_t d = 0; d < mla_kv_width; ++d) acc += q[std::size_t(d)] * float(k[d]);
          s[j] = acc * p.softmax_scale;
          m = std::fmax(m, s[j]);
        }
        float l = 0.0f;
        std::fill(o.begin(), o.end(), 0.0f);
        for (std::size_t j = 0; j < rows.size(); ++j) {
          float const e = std::exp(s[j] - m);
          l += e;
          bf16 const* v = p.kv.row(rows[j]);
          for (std::int64_t d = 0; d < mla_latent_dim; ++d) o[std::size_t(d)] += e * float(v[d]);
        }
        for (std::int64_t d = 0; d < mla_latent_dim; ++d)
          latent[std::size_t(d)] = bf16(rows.empty() ? 0.0f : o[std::size_t(d)] / l);
        if (p.out != nullptr)
          std::copy(
              latent.begin(), latent.end(),
              p.out + b * p.out_batch_stride + qi * p.out_query_stride + h * p.out_head_stride);
        if (p.w_uv != nullptr) {
          bf16* const out_v = p.out_v + b * p.out_v_batch_stride + h * p.out_v_head_stride;
          for (int c = 0; c < p.v_dim; ++c) {
            bf16 const* const w = p.w_uv + h * p.w_uv_head_stride + c * p.w_uv_row_stride;
            float acc = 0.0f;
            for (std::int64_t d = 0; d < mla_latent_dim; ++d)
              acc += float(latent[std::size_t(d)]) * float(w[d]);
            out_v[c] = bf16(acc);
          }
        }
        if (p.lse != nullptr)
          p.lse[(std::int64_t(b) * p.q_len + qi) * p.heads + h] =
              rows.empty() ? neg_inf : m + std::log(l);
      }
    }
  }
}

}  // namespace lightcore::kernels::detail
