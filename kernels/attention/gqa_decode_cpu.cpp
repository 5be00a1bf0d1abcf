// gqa_decode: the argument checks shared by every backend, and the CPU reference: fp32, one
// (row, query head) at a time, a plain two-pass softmax over the row's positions.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <vector>

#include "kernels/attention/gqa_decode.hpp"

namespace lightcore::kernels::detail {
namespace {

bool supported_head_dim(std::int64_t d) noexcept {
  return std::find(std::begin(gqa_decode_head_dims), std::end(gqa_decode_head_dims), d) !=
         std::end(gqa_decode_head_dims);
}

// A [slots, kv_heads, head_dim] pool as [slots, kv_heads * head_dim] rows (heads contiguous
// within a slot, as gqa_write_kv writes them).
kv_pool_view<bf16 const> gqa_pool(tensor_view const& t, std::int64_t head_dim, char const* what,
                                  char const* op) {
  LC_CHECK((t.size(1) <= 1 || t.stride(1) == head_dim) && t.stride(2) == 1,
           op << " needs " << what
              << " with a contiguous head_dim and the kv heads of a slot "
                 "contiguous; got "
              << t);
  std::int64_t const width = t.size(1) * head_dim;
  tensor_view const rows(t.data(), t.type(), {t.size(0), width},
                         {t.size(0) <= 1 ? width : t.stride(0), 1}, t.where());
  auto const pool = pool_view(rows, width, what, op);
  return {pool.data, pool.slots, pool.width, pool.row_stride};
}

// The slot of position pos of request row `row` for a runtime page size: kv_layout<P>::slot.
std::int64_t slot_of(req_to_token_view const& t, std::int64_t row, std::int64_t pos, int page) {
  return std::int64_t(t.data[row * t.row_stride + pos / page]) * page + pos % page;
}

}  // namespace

gqa_decode_params make_gqa_decode_params(device where, gqa_decode_args const& a,
                                         gqa_decode_plan const& plan,
                                         tensor_view const& workspace) {
  char const* const op = "gqa_decode";
  LC_CHECK(a.q.type() == dtype::bf16 && a.k_cache.type() == dtype::bf16 &&
               a.v_cache.type() == dtype::bf16 && a.out.type() == dtype::bf16,
           op << " needs bf16 q, k_cache, v_cache and out (the only dtype built); got "
              << a.q.type() << ", " << a.k_cache.type() << ", " << a.v_cache.type() << ", "
              << a.out.type());
  LC_CHECK(a.q.rank() == 3, op << " needs q [batch, q_heads, head_dim]; got " << a.q);
  std::int64_t const batch = a.q.size(0), q_heads = a.q.size(1), head_dim = a.q.size(2);
  LC_CHECK(supported_head_dim(head_dim),
           op << " supports head_dim 64 and 128; got " << head_dim << " (q " << a.q << ")");
  LC_CHECK(a.k_cache.rank() == 3 && a.k_cache.size(2) == head_dim && a.k_cache.size(1) > 0 &&
               a.v_cache.shape() == a.k_cache.shape(),
           op << " needs k_cache and v_cache of one shape [slots, kv_heads, " << head_dim
              << "]; got k_cache " << a.k_cache << ", v_cache " << a.v_cache);
  std::int64_t const kv_heads = a.k_cache.size(1);
  LC_CHECK(q_heads > 0 && q_heads % kv_heads == 0 && q_heads / kv_heads <= gqa_decode_max_group,
           op << " needs q_heads a multiple of kv_heads with a group (q_heads / kv_heads) of 1.."
              << gqa_decode_max_group << "; got q_heads " << q_heads << ", kv_heads " << kv_heads);
  LC_CHECK(a.out.shape() == a.q.shape(),
           op << " needs out " << a.q.shape() << " like q; got " << a.out);
  LC_CHECK(batch <= INT32_MAX && q_heads <= 4096,
           op << " supports batch up to 2^31 - 1 and q_heads up to 4096; got batch " << batch
              << ", q_heads " << q_heads);
  bool const has_lse = !is_none(a.lse);
  if (has_lse)
    LC_CHECK(a.lse.type() == dtype::f32 && a.lse.shape() == (dims{batch, q_heads}) &&
                 a.lse.is_contiguous() && (batch == 0 || a.lse.data() != nullptr),
             op << " needs lse as a contiguous [" << batch << ", " << q_heads
                << "] f32 tensor, or a default view for none; got " << a.lse);
  LC_CHECK(plan.num_splits >= 1 && plan.num_splits <= gqa_decode_max_splits &&
               plan.workspace_bytes >=
                   gqa_decode_workspace_bytes(batch, q_heads, head_dim, plan.num_splits),
           op << " got a plan of " << plan.num_splits << " splits and " << plan.workspace_bytes
              << " workspace bytes that does not fit batch " << batch << ", q_heads " << q_heads
              << ", head_dim " << head_dim << " (splits 1.." << gqa_decode_max_splits
              << ", from plan_gqa_decode)");

  gqa_decode_params p;
  p.batch = int(batch);
  p.q_heads = int(q_heads);
  p.kv_heads = int(kv_heads);
  p.head_dim = int(head_dim);
  p.softmax_scale = a.softmax_scale;
  p.num_splits = plan.num_splits;
  if (batch == 0) return p;

  LC_CHECK(std::isfinite(a.softmax_scale) && a.softmax_scale > 0,
           op << " needs a finite positive softmax_scale; got " << a.softmax_scale);
  for (auto const* v : {&a.q, &a.out}) {
    bool const ok = v->data() != nullptr && aligned16(v->data()) && v->stride(2) == 1 &&
                    (q_heads == 1 || v->stride(1) % 8 == 0) &&
                    (batch == 1 || v->stride(0) % 8 == 0);
    LC_CHECK(ok, op << " needs q and out with a contiguous head_dim, batch and head strides that "
                       "are multiples of 8 elements and a 16-byte aligned start; got "
                    << *v << " at " << v->data());
  }
  auto const k = gqa_pool(a.k_cache, head_dim, "k_cache", op);
  auto const v = gqa_pool(a.v_cache, head_dim, "v_cache", op);
  check_table(a.req_to_token, op);
  check_index_vector(a.req_rows, batch, "req_rows", op);
  check_index_vector(a.seq_lens, batch, "seq_lens", op);
  for (auto const* t :
       {&a.q, &a.k_cache, &a.v_cache, &a.req_to_token, &a.req_rows, &a.seq_lens, &a.out})
    LC_CHECK(t->where() == where, op << " on " << where << " needs every view there; got " << *t
                                     << " on " << t->where());
  if (has_lse)
    LC_CHECK(a.lse.where() == where,
             op << " on " << where << " needs lse there; it is on " << a.lse.where());

  p.q = static_cast<bf16 const*>(a.q.data());
  p.q_batch_stride = a.q.stride(0);
  p.q_head_stride = a.q.stride(1);
  p.k = k;
  p.v = v;
  p.table = table_view(a.req_to_token);
  p.req_rows = static_cast<std::int32_t const*>(a.req_rows.data());
  p.seq_lens = static_cast<std::int32_t const*>(a.seq_lens.data());
  p.out = static_cast<bf16*>(a.out.data());
  p.out_batch_stride = a.out.stride(0);
  p.out_head_stride = a.out.stride(1);
  p.lse = has_lse ? static_cast<float*>(a.lse.data()) : nullptr;
  if (plan.num_splits > 1) {
    auto const partials = carve_split_kv_workspace(workspace, where, plan.workspace_bytes,
                                                   batch * plan.num_splits * q_heads, head_dim, op);
    p.partial_out = partials.out;
    p.partial_lse = partials.lse;
  }
  return p;
}

void gqa_decode_cpu(gqa_decode_params const& p, int page_size) {
  // Every table entry the lengths reach must name a slot in the pools: checked before writing.
  std::vector<std::vector<std::int64_t>> slots(std::size_t(p.batch));
  for (int b = 0; b < p.batch; ++b) {
    std::int32_t const row = p.req_rows[b], len = p.seq_lens[b];
    LC_CHECK(row >= 0 && row < p.table.rows && len >= 0 &&
                 (std::int64_t(len) + page_size - 1) / page_size <= p.table.columns,
             "gqa_decode: batch row " << b << " has request row " << row << " and length " << len
                                      << "; req_to_token is [" << p.table.rows << ", "
                                      << p.table.columns << "] at page size " << page_size);
    for (std::int32_t j = 0; j < len; ++j) {
      std::int64_t const slot = slot_of(p.table, row, j, page_size);
      LC_CHECK(slot >= 0 && slot < p.k.slots,
               "gqa_decode: batch row " << b << " position " << j << " is in slot " << slot
                                        << ", outside the pools of " << p.k.slots << " slots");
      slots[std::size_t(b)].push_back(slot);
    }
  }
  int const group = p.q_heads / p.kv_heads, d = p.head_dim;
  float const neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> q(static_cast<std::size_t>(d)), s, o(static_cast<std::size_t>(d));
  for (int b = 0; b < p.batch; ++b) {
    auto const& rows = slots[std::size_t(b)];
    for (int h = 0; h < p.q_heads; ++h) {
      std::int64_t const kv_offset = std::int64_t(h / group) * d;
      bf16 const* qh = p.q + b * p.q_batch_stride + h * p.q_head_stride;
      for (int i = 0; i < d; ++i) q[std::size_t(i)] = float(qh[i]);
      s.assign(rows.size(), 0.0f);
      float m = neg_inf;
      for (std::size_t j = 0; j < rows.size(); ++j) {
        bf16 const* k = p.k.row(rows[j]) + kv_offset;
        float acc = 0.0f;
        for (int i = 0; i < d; ++i) acc += q[std::size_t(i)] * float(k[i]);
        s[j] = acc * p.softmax_scale;
        m = std::fmax(m, s[j]);
      }
      float l = 0.0f;
      std::fill(o.begin(), o.end(), 0.0f);
      for (std::size_t j = 0; j < rows.size(); ++j) {
        float const e = std::exp(s[j] - m);
        l += e;
        bf16 const* v = p.v.row(rows[j]) + kv_offset;
        for (int i = 0; i < d; ++i) o[std::size_t(i)] += e * float(v[i]);
      }
      bf16* out = p.out + b * p.out_batch_stride + h * p.out_head_stride;
      for (int i = 0; i < d; ++i) out[i] = bf16(rows.empty() ? 0.0f : o[std::size_t(i)] / l);
      if (p.lse != nullptr)
        p.lse[std::int64_t(b) * p.q_heads + h] = rows.empty() ? neg_inf : m + std::log(l);
    }
  }
}

}  // namespace lightcore::kernels::detail
