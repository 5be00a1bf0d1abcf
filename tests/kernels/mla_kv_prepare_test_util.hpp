// mla_kv_prepare's test data: a batch of new tokens with strided kv_a rows, q heads, positions,
// a cos/sin table and scattered slots, runnable on any backend.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/mla/mla_kv_prepare.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::test {

struct kv_prepare_case {
  std::int64_t tokens = 0, heads = 0, slots = 0, positions = 0;
  static constexpr std::int64_t kv_a_stride = 576 + 64;  // kv_a rows inside a wider buffer
  static constexpr std::int64_t q_dim = 192;             // q_rope is the last 64 of 192
  std::vector<bf16> kv_a, gamma, q, pool;
  std::vector<float> cos_sin;
  std::vector<std::int32_t> slot_list, table, req_rows, token_positions;

  kv_prepare_case(std::int64_t t, std::int64_t h, std::uint64_t seed)
      : tokens(t), heads(h), slots(3 * t + 5), positions(t + 11) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f), scale(0.5f, 1.5f);
    kv_a.resize(std::size_t(t * kv_a_stride));
    for (auto& v : kv_a) v = bf16(normal(rng));
    gamma.resize(512);
    for (auto& v : gamma) v = bf16(scale(rng));
    q.resize(std::size_t(t * h * q_dim));
    for (auto& v : q) v = bf16(normal(rng));
    cos_sin.resize(std::size_t(positions * 64));
    for (auto& v : cos_sin) v = unit(rng);
    pool.assign(std::size_t(slots * 576), bf16::from_bits(0xFFFF));  // NaN: unwritten
    // Scattered slots; the list has one padding token (-1) when there are several tokens.
    std::vector<std::int32_t> perm(static_cast<std::size_t>(slots));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    slot_list.assign(perm.begin(), perm.begin() + t);
    if (t > 2) slot_list[1] = -1;
    // One request whose table maps each token's (distinct) position to its slot.
    std::vector<std::int32_t> pos(static_cast<std::size_t>(positions));
    std::iota(pos.begin(), pos.end(), 0);
    std::shuffle(pos.begin(), pos.end(), rng);
    token_positions.assign(pos.begin(), pos.begin() + t);
    req_rows.assign(std::size_t(t), 0);
    table.assign(std::size_t(positions), -1);
    for (std::int64_t i = 0; i < t; ++i)
      table[std::size_t(token_positions[std::size_t(i)])] = perm[std::size_t(i)];
  }
};

// The pool, q and kv_a after mla_kv_prepare ran on a backend, and the absorbed queries of the
// last `absorb_rows` tokens when it absorbed W_UK ([rows, heads, 512]).
struct kv_prepare_result {
  std::vector<bf16> pool, q, kv_a, q_absorbed;
};

// A random W_UK [heads, 128, 512] of the scale DeepSeek's has (kv_b_proj rows ~0.05).
inline std::vector<bf16> random_w_uk(std::int64_t heads, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<bf16> w(std::size_t(heads * 128 * 512));
  for (auto& v : w) v = bf16(normal(rng));
  return w;
}

// Runs mla_kv_prepare on `backend` over copies of the case's buffers there (tokens, heads >= 1);
// with w_uk, it also absorbs W_UK into the q_nope of the last absorb_rows tokens.
template <Backend B>
kv_prepare_result run_kv_prepare(B& backend, kv_prepare_case const& c, bool through_table,
                                 std::vector<bf16> const* w_uk = nullptr,
                                 std::int64_t absorb_rows = 0) {
  auto stream = backend.make_stream();
  auto upload = [&](auto const& host, dtype type, dims shape) {
    tensor<B> t(backend, type, shape);
    backend.copy(t.data(), host.data(), t.nbytes(), stream);
    return t;
  };
  std::int64_t const t = c.tokens, h = c.heads;
  auto kv_a = upload(c.kv_a, dtype::bf16, {t, c.kv_a_stride});
  auto gamma = upload(c.gamma, dtype::bf16, {512});
  auto q = upload(c.q, dtype::bf16, {t, h, c.q_dim});
  auto cos_sin = upload(c.cos_sin, dtype::f32, {c.positions, 64});
  auto pool = upload(c.pool, dtype::bf16, {c.slots, 576});
  auto slots = upload(c.slot_list, dtype::i32, {t});
  auto table = upload(c.table, dtype::i32, {1, c.positions});
  auto rows = upload(c.req_rows, dtype::i32, {t});
  auto positions = upload(c.token_positions, dtype::i32, {t});
  kernels::mla_kv_prepare_args a;
  a.kv_a = tensor_view(kv_a.data(), dtype::bf16, {t, 576}, {c.kv_a_stride, 1}, backend.where());
  a.norm_weight = gamma.view();
  a.eps = 1e-6f;
  a.q_rope = q.view().slice(1, 0, h).slice(2, 128, 192);
  a.positions = positions.view();
  a.cos_sin = cos_sin.view();
  a.slots = through_table ? kernels::kv_slots::table(table.view(), rows.view(), positions.view())
                          : kernels::kv_slots::list(slots.view());
  a.kv_cache = pool.view();
  std::int64_t const r0 = t - absorb_rows;
  tensor<B> w, absorbed;
  if (w_uk != nullptr) {
    w = upload(*w_uk, dtype::bf16, {h, 128, 512});
    absorbed = tensor<B>(backend, dtype::bf16, {absorb_rows, h, 512});
    backend.fill(absorbed.data(), absorbed.nbytes(), 1, 0xFF, stream);  // NaN until written
    a.q_nope = q.view().slice(0, r0, t).slice(2, 0, 128);
    a.w_uk = w.view();
    a.q_absorbed = absorbed.view();
  }
  kernels::mla_kv_prepare(backend, a, stream);
  kv_prepare_result r{std::vector<bf16>(c.pool.size()), std::vector<bf16>(c.q.size()),
                      std::vector<bf16>(c.kv_a.size()),
                      std::vector<bf16>(std::size_t(absorb_rows * h * 512))};
  if (w_uk != nullptr)
    backend.copy(r.q_absorbed.data(), absorbed.data(), absorbed.nbytes(), stream);
  backend.copy(r.pool.data(), pool.data(), pool.nbytes(), stream);
  backend.copy(r.q.data(), q.data(), r.q.size() * sizeof(bf16), stream);
  backend.copy(r.kv_a.data(), kv_a.data(), r.kv_a.size() * sizeof(bf16), stream);
  stream.synchronize();
  return r;
}

// Whether two bf16 buffers hold the same bits.
inline bool same_bits(std::vector<bf16> const& a, std::vector<bf16> const& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].bits != b[i].bits) return false;
  return true;
}

// The absorbed queries of the case's last `rows` tokens against a double-precision product of
// q_nope and w_uk: 2^-8 of the element (its bf16 rounding) plus 1e-5 of the sum of |terms| (fp32
// sums of 128 terms in any order stay well inside; near-cancelling sums are covered by it).
// Reports the first few misses; returns how many elements missed.
inline std::int64_t absorb_misses(kv_prepare_case const& c, std::vector<bf16> const& w_uk,
                                  std::int64_t rows, std::vector<bf16> const& q_absorbed) {
  std::int64_t const r0 = c.tokens - rows;
  std::int64_t misses = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t h = 0; h < c.heads; ++h) {
      for (std::int64_t n = 0; n < 512; ++n) {
        double want = 0, scale = 0;
        for (std::int64_t k = 0; k < 128; ++k) {
          double const term =
              double(float(c.q[std::size_t(((r0 + r) * c.heads + h) * c.q_dim + k)])) *
              double(float(w_uk[std::size_t((h * 128 + k) * 512 + n)]));
          want += term;
          scale += std::abs(term);
        }
        double const got = float(q_absorbed[std::size_t((r * c.heads + h) * 512 + n)]);
        if (!(std::abs(got - want) <= std::abs(want) / 256 + 1e-5 * scale) && ++misses <= 8)
          ADD_FAILURE() << "absorbed row " << r << " head " << h << " column " << n << ": " << got
                        << ", want " << want;
      }
    }
  }
  return misses;
}

}  // namespace lightcore::test
