// Shared experts folded into the expert stack against the separate shared MLP, on the CPU.
#include <gtest/gtest.h>

#include "lightcore/backend/cpu.hpp"
#include "moe_block_test_util.hpp"

namespace lightcore::test {
namespace {

TEST(MoeBlockCpu, SharedExpertsFoldedEqualTheSeparateMlp) {
  backend::cpu cpu;
  for (moe_fold_case const& k : moe_fold_cases()) expect_fold_matches_apart(cpu, k);
}

}  // namespace
}  // namespace lightcore::test
