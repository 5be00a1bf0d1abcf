// Helpers shared by the mla tests (CPU and CUDA): a decode batch with its latent rows scattered
// over a larger pool (free slots hold NaN, so reading a wrong slot shows), req_to_token tables,
// the decode written independently in double precision, and the comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/mla/mla_params.hpp"
#include "lightcore/core/bf16.hpp"

namespace lightcore::test {

inline constexpr std::int64_t mla_width = kernels::mla_kv_width;     // 576
inline constexpr std::int64_t mla_latent = kernels::mla_latent_dim;  // 512
inline constexpr std::int64_t mla_rope = kernels::mla_rope_dim;      // 64

// DeepSeek-V3's scale: 1 / sqrt(qk_head_dim 192) times YaRN's mscale^2 (mscale_all_dim 1,
// factor 40: 0.1 ln 40 + 1).
inline float deepseek_softmax_scale() {
  double const mscale = 0.1 * std::log(40.0) + 1.0;
  return float(mscale * mscale / std::sqrt(192.0));
}

inline std::vector<bf16> normal_bf16(std::size_t n, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<bf16> v(n);
  for (bf16& x : v) x = bf16(dist(rng));
  return v;
}

// One decode batch on the host. q and the latent rows are N(0, 0.5^2) and N(0, 1): with DeepSeek's
// scale the scores spread by ~1.6, so many positions matter and none dominates.
struct mla_batch {
  std::int64_t batch = 0, heads = 0;
  std::int64_t slots = 0;                  // pool rows
  std::int64_t pool_stride = 0;            // elements between pool rows (>= 576)
  std::int64_t requests = 0, columns = 0;  // req_to_token shape
  int page_size = 1;
  std::vector<std::int32_t> seq_lens, req_rows, table;
  std::vector<bf16> q;     // [batch, heads, 576]: q_nope | q_rope, as one projection writes it
  std::vector<bf16> pool;  // [slots, pool_stride]; rows not used by the batch (and the padding)
                           // are NaN
  std::vector<std::vector<std::int64_t>> row_slots;  // the slot of each position of each row
};

inline bf16 nan_bf16() { return bf16::from_bits(0x7FC0); }

// The token-slot layout of a decode batch with the given lengths, as kernels find it through
// req_to_token. Slots are a random permutation of a pool with `spare` pages more than the tokens
// need (never contiguous by accident); request rows are a random choice among batch + 5 table
// rows; with page_size > 1 the pages are permuted and a position's slot is page * P + pos % P.
// Table entries no position uses name a slot far outside the pool: reading one would be caught.
struct paged_rows {
  std::int64_t slots = 0, requests = 0, columns = 0;  // pool rows; req_to_token shape
  std::vector<std::int32_t> req_rows, table;          // [batch]; [requests, columns]
  std::vector<std::vector<std::int64_t>> row_slots;   // the slot of each position of each row
};

inline paged_rows make_paged_rows(std::vector<std::int32_t> const& lens, int page_size,
                                  std::int64_t spare, std::mt19937_64& rng) {
  paged_rows r;
  std::int64_t const batch = std::int64_t(lens.size());
  std::int64_t max_len = 1, pages = spare;
  for (auto l : lens) {
    max_len = std::max<std::int64_t>(max_len, l);
    pages += (l + page_size - 1) / page_size;
  }
  r.slots = pages * page_size;
  r.requests = batch + 5;
  r.columns = (max_len + page_size - 1) / page_size + 3;
  std::vector<std::int32_t> page_ids(static_cast<std::size_t>(pages));
  std::iota(page_ids.begin(), page_ids.end(), 0);
  std::shuffle(page_ids.begin(), page_ids.end(), rng);
  std::vector<std::int32_t> rows(std::size_t(r.requests));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  r.req_rows.assign(rows.begin(), rows.begin() + batch);
  r.table.assign(std::size_t(r.requests * r.columns), std::int32_t(1) << 29);
  std::size_t next_page = 0;
  r.row_slots.resize(std::size_t(batch));
  for (std::int64_t b = 0; b < batch; ++b) {
    std::int64_t const row = r.req_rows[std::size_t(b)];
    for (std::int64_t c = 0; c < (lens[std::size_t(b)] + page_size - 1) / page_size; ++c)
      r.table[std::size_t(row * r.columns + c)] = page_ids[next_page++];
    for (std::int64_t j = 0; j < lens[std::size_t(b)]; ++j)
      r.row_slots[std::size_t(b)].push_back(
          std::int64_t(r.table[std::size_t(row * r.columns + j / page_size)]) * page_size +
          j % page_size);
  }
  return r;
}

// An MLA decode batch with the given lengths over make_paged_rows' layout; q and the used pool
// rows ~ N(0, 1) (q scaled by 0.5).
inline mla_batch make_mla_batch(std::vector<std::int32_t> const& lens, std::int64_t heads,
                                std::mt19937_64& rng, std::int64_t spare = 37,
                                std::int64_t pool_stride = mla_width, int page_size = 1) {
  mla_batch m;
  m.batch = std::int64_t(lens.size());
  m.heads = heads;
  m.seq_lens = lens;
  m.page_size = page_size;
  m.pool_stride = pool_stride;
  paged_rows r = make_paged_rows(lens, page_size, spare, rng);
  m.slots = r.slots;
  m.requests = r.requests;
  m.columns = r.columns;
  m.req_rows = std::move(r.req_rows);
  m.table = std::move(r.table);
  m.row_slots = std::move(r.row_slots);
  m.pool.assign(std::size_t(m.slots * pool_stride), nan_bf16());
  m.q = normal_bf16(std::size_t(m.batch * heads * mla_width), 0.5f, rng);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto const& slots : m.row_slots)
    for (std::int64_t const slot : slots)
      for (std::int64_t d = 0; d < mla_width; ++d)
        m.pool[std::size_t(slot * pool_stride + d)] = bf16(dist(rng));
  return m;
}

struct mla_result {
  std::vector<double> out;  // [batch, heads, 512]
  std::vector<double> lse;  // [batch, heads]
};

// The definition, in double from the bf16 values: s_j = scale * q . k_j over all 576 columns,
// out = sum_j softmax(s)_j v_j with v_j the first 512 columns, lse = log sum_j exp(s_j).
inline mla_result mla_decode_double(mla_batch const& m, float scale) {
  mla_result r;
  r.out.assign(std::size_t(m.batch * m.heads * mla_latent), 0.0);
  r.lse.assign(std::size_t(m.batch * m.heads), -std::numeric_limits<double>::infinity());
  for (std::int64_t b = 0; b < m.batch; ++b) {
    auto const& slots = m.row_slots[std::size_t(b)];
    if (slots.empty()) continue;
    for (std::int64_t h = 0; h < m.heads; ++h) {
      bf16 const* q = &m.q[std::size_t((b * m.heads + h) * mla_width)];
      std::vector<double> s(slots.size());
      double mx = -std::numeric_limits<double>::infinity();
      for (std::size_t j = 0; j < slots.size(); ++j) {
        bf16 const* k = &m.pool[std::size_t(slots[j] * m.pool_stride)];
        double acc = 0;
        for (std::int64_t d = 0; d < mla_width; ++d) acc += double(float(q[d])) * float(k[d]);
        s[j] = acc * scale;
        mx = std::max(mx, s[j]);
      }
      double l = 0;
      double* out = &r.out[std::size_t((b * m.heads + h) * mla_latent)];
      for (std::size_t j = 0; j < slots.size(); ++j) {
        double const e = std::exp(s[j] - mx);
        l += e;
        bf16 const* v = &m.pool[std::size_t(slots[j] * m.pool_stride)];
        for (std::int64_t d = 0; d < mla_latent; ++d) out[d] += e * float(v[d]);
      }
      for (std::int64_t d = 0; d < mla_latent; ++d) out[d] /= l;
      r.lse[std::size_t(b * m.heads + h)] = mx + std::log(l);
    }
  }
  return r;
}

// Relative L2 error of got against want over one (row, head)'s 512 outputs; a NaN anywhere makes
// it NaN (so `!(err <= tol)` catches unwritten or poisoned outputs).
template <class Want>
double relative_l2(bf16 const* got, Want const* want, std::int64_t n) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    double const g = float(got[i]), w = double(want[i]);
    num += (g - w) * (g - w);
    den += w * w;
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace lightcore::test
