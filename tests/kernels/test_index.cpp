// copy_indexed on the CPU: gather-scatter and plain scatter, and the errors for bad views and
// out-of-range indices.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/index/index.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore::test {
namespace {

tensor_view view_of(std::vector<std::int32_t>& v) {
  return tensor_view(v.data(), dtype::i32, {std::int64_t(v.size())}, device::cpu());
}

TEST(CopyIndexed, GathersAndScatters) {
  backend::cpu cpu;
  auto s = cpu.make_stream();
  std::vector<std::int32_t> dst(6, -1), to{4, 0, 2}, src{10, 11, 12, 13}, from{3, 3, 1};
  kernels::copy_indexed(cpu, view_of(dst), view_of(to), view_of(src), view_of(from), s);
  EXPECT_EQ(dst, (std::vector<std::int32_t>{13, -1, 11, -1, 13, -1}));
  std::vector<std::int32_t> values{7, 8, 9};  // no source index: value k goes to to[k]
  kernels::copy_indexed(cpu, view_of(dst), view_of(to), view_of(values), tensor_view{}, s);
  EXPECT_EQ(dst, (std::vector<std::int32_t>{8, -1, 9, -1, 7, -1}));
}

TEST(CopyIndexed, RefusesBadViewsAndIndices) {
  backend::cpu cpu;
  auto s = cpu.make_stream();
  std::vector<std::int32_t> dst(4, 0), to{0, 5}, src{1, 2}, from{0, 1}, short_from{0};
  EXPECT_THROW(
      kernels::copy_indexed(cpu, view_of(dst), view_of(to), view_of(src), view_of(from), s),
      error);  // target 5 outside dst
  std::vector<std::int32_t> ok_to{0, 1};
  EXPECT_THROW(kernels::copy_indexed(cpu, view_of(dst), view_of(ok_to), view_of(src),
                                     view_of(short_from), s),
               error);  // index counts differ
  std::vector<float> f(2);
  tensor_view const fv(f.data(), dtype::f32, {2}, device::cpu());
  EXPECT_THROW(kernels::copy_indexed(cpu, fv, view_of(ok_to), view_of(src), tensor_view{}, s),
               error);
}

}  // namespace
}  // namespace lightcore::test
