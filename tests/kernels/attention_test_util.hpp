// Helpers shared by the attention tests (CPU and CUDA): a ragged prefill batch (new tokens after
// a cached prefix per request) with random q, k, v, the causal attention written independently in
// double precision over chosen query rows, and the comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/core/bf16.hpp"

namespace lightcore::test {

inline std::vector<bf16> random_bf16_normal(std::size_t n, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<bf16> v(n);
  for (bf16& x : v) x = bf16(dist(rng));
  return v;
}

// One ragged prefill batch on the host, every tensor contiguous. With rope the key's last 64 dims
// live in k_rope [S, 64] (one row per key token, shared by the heads) and k holds qk - 64 dims.
// `spare_q` and `spare_k` rows past the last request pad T and S (never read as keys, never
// written as outputs).
struct prefill_batch {
  std::int64_t batch = 0, hq = 0, hk = 0, qk = 0, vd = 0, rope = 0;
  std::int64_t t = 0, s = 0;  // rows of q/out and of k/v
  std::vector<std::int32_t> cu_q, cu_k;
  std::vector<bf16> q, k, k_rope, v;
  float scale = 0;

  std::int64_t k_dim() const { return qk - rope; }
};

// Request b gets lens_q[b] new tokens after prefix[b] cached ones. q, k, v are N(0, 1) and the
// scale 1 / sqrt(qk): scores spread by ~1, so many keys matter and none dominates.
inline prefill_batch make_prefill_batch(std::vector<std::int32_t> const& lens_q,
                                        std::vector<std::int32_t> const& prefix, std::int64_t hq,
                                        std::int64_t hk, std::int64_t qk, std::int64_t vd,
                                        bool rope, std::mt19937_64& rng, std::int64_t spare_q = 0,
                                        std::int64_t spare_k = 0) {
  prefill_batch p;
  p.batch = std::int64_t(lens_q.size());
  p.hq = hq;
  p.hk = hk;
  p.qk = qk;
  p.vd = vd;
  p.rope = rope ? 64 : 0;
  p.cu_q.assign(1, 0);
  p.cu_k.assign(1, 0);
  for (std::size_t b = 0; b < lens_q.size(); ++b) {
    p.cu_q.push_back(p.cu_q.back() + lens_q[b]);
    p.cu_k.push_back(p.cu_k.back() + lens_q[b] + prefix[b]);
  }
  p.t = p.cu_q.back() + spare_q;
  p.s = p.cu_k.back() + spare_k;
  p.q = random_bf16_normal(std::size_t(p.t * hq * qk), 1.0f, rng);
  p.k = random_bf16_normal(std::size_t(p.s * hk * p.k_dim()), 1.0f, rng);
  p.k_rope = random_bf16_normal(std::size_t(p.s * p.rope), 1.0f, rng);
  p.v = random_bf16_normal(std::size_t(p.s * hk * vd), 1.0f, rng);
  p.scale = float(1.0 / std::sqrt(double(qk)));
  return p;
}

struct prefill_expected {
  std::vector<std::int64_t> rows;  // the token rows computed
  std::vector<double> out;         // [rows, hq, vd]
  std::vector<double> lse;         // [rows, hq]
};

// The definition in double from the bf16 values, for the given query token rows (each inside a
// request): query i of request b sees keys 0 .. len_k - len_q + i; key head h / (hq / hk).
inline prefill_expected prefill_double(prefill_batch const& p, std::vector<std::int64_t> rows) {
  prefill_expected e;
  e.rows = std::move(rows);
  e.out.assign(e.rows.size() * std::size_t(p.hq * p.vd), 0.0);
  e.lse.assign(e.rows.size() * std::size_t(p.hq), 0.0);
  std::int64_t const group = p.hq / p.hk, kd = p.k_dim();
  for (std::size_t n = 0; n < e.rows.size(); ++n) {
    std::int64_t const t = e.rows[n];
    std::int64_t b = 0;
    while (p.cu_q[std::size_t(b + 1)] <= t) ++b;
    std::int64_t const lq = p.cu_q[std::size_t(b + 1)] - p.cu_q[std::size_t(b)];
    std::int64_t const lk = p.cu_k[std::size_t(b + 1)] - p.cu_k[std::size_t(b)];
    std::int64_t const visible = lk - lq + (t - p.cu_q[std::size_t(b)]) + 1;
    std::int64_t const k0 = p.cu_k[std::size_t(b)];
    for (std::int64_t h = 0; h < p.hq; ++h) {
      std::int64_t const g = h / group;
      bf16 const* q = &p.q[std::size_t((t * p.hq + h) * p.qk)];
      std::vector<double> s(static_cast<std::size_t>(visible));
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j < visible; ++j) {
        bf16 const* k = &p.k[std::size_t(((k0 + j) * p.hk + g) * kd)];
        double acc = 0;
        for (std::int64_t d = 0; d < kd; ++d) acc += double(float(q[d])) * float(k[d]);
        for (std::int64_t d = 0; d < p.rope; ++d)
          acc += double(float(q[kd + d])) * float(p.k_rope[std::size_t((k0 + j) * p.rope + d)]);
        s[std::size_t(j)] = acc * p.scale;
        mx = std::max(mx, s[std::size_t(j)]);
      }
      double l = 0;
      double* out = &e.out[(n * std::size_t(p.hq) + std::size_t(h)) * std::size_t(p.vd)];
      for (std::int64_t j = 0; j < visible; ++j) {
        double const w = std::exp(s[std::size_t(j)] - mx);
        l += w;
        bf16 const* v = &p.v[std::size_t(((k0 + j) * p.hk + g) * p.vd)];
        for (std::int64_t d = 0; d < p.vd; ++d) out[d] += w * float(v[d]);
      }
      for (std::int64_t d = 0; d < p.vd; ++d) out[d] /= l;
      e.lse[n * std::size_t(p.hq) + std::size_t(h)] = mx + std::log(l);
    }
  }
  return e;
}

// Every row of every request.
inline std::vector<std::int64_t> all_rows(prefill_batch const& p) {
  std::vector<std::int64_t> rows(std::size_t(p.cu_q.back()));
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = std::int64_t(i);
  return rows;
}

// Rows worth checking in a large batch: each request's first and last rows, both sides of every
// 64-row tile boundary, and `random` more per request.
inline std::vector<std::int64_t> sampled_rows(prefill_batch const& p, int random,
                                              std::mt19937_64& rng) {
  std::vector<std::int64_t> rows;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    std::int64_t const first = p.cu_q[std::size_t(b)], last = p.cu_q[std::size_t(b + 1)];
    if (first == last) continue;
    for (std::int64_t r = first; r < last; r += 64) {
      rows.push_back(r);
      rows.push_back(std::min(last - 1, r + 63));
    }
    std::uniform_int_distribution<std::int64_t> pick(first, last - 1);
    for (int i = 0; i < random; ++i) rows.push_back(pick(rng));
  }
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

// Compares out [T, hq, vd] bf16 and lse [T, hq] f32 with the expected rows: relative L2 error per
// (row, head) within out_tol, |lse error| within lse_tol * (1 + |lse|). A NaN (an unwritten,
// poisoned output) fails. Returns the worst relative L2 error.
inline double expect_prefill_close(prefill_batch const& p, std::vector<bf16> const& out,
                                   std::vector<float> const& lse, prefill_expected const& want,
                                   double out_tol, double lse_tol) {
  std::int64_t bad = 0;
  double worst = 0;
  for (std::size_t n = 0; n < want.rows.size(); ++n) {
    std::int64_t const t = want.rows[n];
    for (std::int64_t h = 0; h < p.hq; ++h) {
      double const* w = &want.out[(n * std::size_t(p.hq) + std::size_t(h)) * std::size_t(p.vd)];
      bf16 const* g = &out[std::size_t((t * p.hq + h) * p.vd)];
      double num = 0, den = 0;
      for (std::int64_t d = 0; d < p.vd; ++d) {
        double const diff = double(float(g[d])) - w[d];
        num += diff * diff;
        den += w[d] * w[d];
      }
      double const err = std::sqrt(num / std::max(den, 1e-30));
      worst = std::max(worst, std::isnan(err) ? 1e9 : err);
      if (!(err <= out_tol) && ++bad <= 8)
        ADD_FAILURE() << "token " << t << " head " << h << ": relative L2 error " << err;
      double const wl = want.lse[n * std::size_t(p.hq) + std::size_t(h)];
      double const gl = lse[std::size_t(t * p.hq + h)];
      if (!(std::abs(gl - wl) <= lse_tol * (1 + std::abs(wl))) && ++bad <= 8)
        ADD_FAILURE() << "token " << t << " head " << h << ": lse " << gl << ", want " << wl;
    }
  }
  EXPECT_EQ(bad, 0);
  return worst;
}

}  // namespace lightcore::test
