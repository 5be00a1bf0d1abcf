// The random seed of a test run, shared by every suite: LIGHTCORE_TEST_SEED=<n> replays a run.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <random>
#include <string>

namespace lightcore::test {

// This run's seed: LIGHTCORE_TEST_SEED when set (to replay a failure), else a fresh one. Printed
// once, so that every failure can be reproduced.
inline std::uint64_t run_seed() {
  static std::uint64_t const seed = [] {
    std::uint64_t s = 0;
    if (char const* env = std::getenv("LIGHTCORE_TEST_SEED")) {
      s = std::strtoull(env, nullptr, 0);
    } else {
      std::random_device rd;
      s = (std::uint64_t(rd()) << 32) ^ rd();
    }
    std::cout << "[   SEED   ] LIGHTCORE_TEST_SEED=" << s << std::endl;
    return s;
  }();
  return seed;
}

// A generator for the running test: the run's seed mixed with the test's full name, so that a
// test draws the same inputs whatever else runs before it.
inline std::mt19937_64 test_rng() {
  auto const* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "";
  return std::mt19937_64(run_seed() ^ std::hash<std::string>{}(name));
}

}  // namespace lightcore::test
