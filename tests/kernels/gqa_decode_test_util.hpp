// The GQA decode suites' host batch (CPU and CUDA tests share it): k and v pools of
// [slots, slot_stride] laid out by make_paged_rows (mla_test_util.hpp), whose rows the batch does
// not use (and the padding of the rows it uses) hold NaN, so reading a wrong slot shows.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "convert_test_util.hpp"
#include "mla_test_util.hpp"

namespace lightcore::test {

struct gqa_batch {
  std::int64_t batch = 0, q_heads = 0, kv_heads = 0, dim = 0;
  std::int64_t slots = 0, slot_stride = 0, requests = 0, columns = 0;
  int page_size = 1;
  std::vector<std::int32_t> seq_lens, req_rows, table;
  std::vector<bf16> q, k, v;                         // q [batch, q_heads, dim]
  std::vector<std::vector<std::int64_t>> row_slots;  // the slot of each position of each row
};

// slot_stride: elements between pool rows (0: kv_heads * dim); q, k, v ~ N(0, 1).
inline gqa_batch make_batch(std::vector<std::int32_t> const& lens, std::int64_t q_heads,
                            std::int64_t kv_heads, std::int64_t dim, std::mt19937_64& rng,
                            std::int64_t slot_stride = 0, int page_size = 1) {
  gqa_batch m;
  m.batch = std::int64_t(lens.size());
  m.q_heads = q_heads;
  m.kv_heads = kv_heads;
  m.dim = dim;
  m.seq_lens = lens;
  m.page_size = page_size;
  m.slot_stride = slot_stride > 0 ? slot_stride : kv_heads * dim;
  paged_rows r = make_paged_rows(lens, page_size, 37, rng);
  m.slots = r.slots;
  m.requests = r.requests;
  m.columns = r.columns;
  m.req_rows = std::move(r.req_rows);
  m.table = std::move(r.table);
  m.row_slots = std::move(r.row_slots);
  m.k.assign(std::size_t(m.slots * m.slot_stride), nan_bf16());
  m.v = m.k;
  m.q = normal_bf16(std::size_t(m.batch * q_heads * dim), 1.0f, rng);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto const& slots : m.row_slots)
    for (std::int64_t const slot : slots)
      for (std::int64_t e = 0; e < kv_heads * dim; ++e) {
        m.k[std::size_t(slot * m.slot_stride + e)] = bf16(dist(rng));
        m.v[std::size_t(slot * m.slot_stride + e)] = bf16(dist(rng));
      }
  return m;
}

}  // namespace lightcore::test
