// What the communicator tests share: a guard that turns a hang into a failure, per-rank random
// inputs, and the sequential definition of a sum over ranks.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "lightcore/core/bf16.hpp"

namespace lightcore::test {

// Runs f on another thread and waits at most `limit`. A collective that hangs cannot be
// cancelled, so past the limit the process ends with a failure instead of blocking CTest.
template <class F>
void within(std::chrono::seconds limit, F&& f) {
  std::packaged_task<void()> task(std::forward<F>(f));
  std::future<void> done = task.get_future();
  std::thread runner(std::move(task));
  if (done.wait_for(limit) == std::future_status::timeout) {
    std::fprintf(stderr, "FAILED: the ranks did not finish within %lld s (a hang)\n",
                 static_cast<long long>(limit.count()));
    std::fflush(stderr);
    std::_Exit(EXIT_FAILURE);
  }
  runner.join();
  done.get();  // rethrows what f threw
}

inline constexpr auto hang_limit = std::chrono::seconds(60);

inline std::vector<bf16> random_bf16(std::int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = bf16(dist(rng));
  return v;
}

inline std::vector<float> random_f32(std::int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// The definition the communicators promise: element i of the sum is the ranks' values added in
// rank order in fp32, rounded once to T. inputs[r] is rank r's buffer; [first, first + count).
template <class T>
std::vector<T> rank_order_sum(std::vector<std::vector<T>> const& inputs, std::size_t first,
                              std::size_t count) {
  std::vector<T> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    float acc = float(inputs[0][first + i]);
    for (std::size_t r = 1; r < inputs.size(); ++r) acc += float(inputs[r][first + i]);
    out[i] = T(acc);
  }
  return out;
}

// Bit-for-bit equality of two buffers of trivially copyable elements (NaN-safe, -0 != +0).
template <class T>
bool same_bits(std::vector<T> const& a, std::vector<T> const& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace lightcore::test
