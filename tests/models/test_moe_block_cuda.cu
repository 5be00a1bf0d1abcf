// Shared experts folded into the expert stack on the GPU (the grouped GEMMs run them) against the
// separate shared MLP on the GPU (dense GEMMs). The grouped GEMMs themselves are checked against
// the CPU by the kernels' suite.
#include <gtest/gtest.h>

#include "common/cuda.hpp"
#include "lightcore/backend/cuda.hpp"
#include "moe_block_test_util.hpp"

namespace lightcore::test {
namespace {

class MoeBlockCuda : public cuda_test {};

TEST_F(MoeBlockCuda, SharedExpertsFoldedEqualTheSeparateMlp) {
  backend::cuda gpu(0);
  for (moe_fold_case const& k : moe_fold_cases()) expect_fold_matches_apart(gpu, k);
}

}  // namespace
}  // namespace lightcore::test
