// copy_indexed and copy_rows on the CPU: gather-scatter and plain scatter, and the errors for bad
// views and out-of-range indices.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
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

TEST(CopyRows, MovesWholeRowsBySlot) {
  backend::cpu cpu;
  auto s = cpu.make_stream();
  constexpr std::int64_t width = 24;  // bf16: 48-byte rows
  std::vector<std::uint16_t> src(5 * width), dst(4 * width, 0xFFFF);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = std::uint16_t(i);
  std::vector<std::int32_t> to{3, 0}, from{4, 1};
  tensor_view const sv(src.data(), dtype::bf16, {5, width}, device::cpu());
  tensor_view const dv(dst.data(), dtype::bf16, {4, width}, device::cpu());
  kernels::copy_rows(cpu, dv, view_of(to), sv, view_of(from), s);
  for (std::int64_t c = 0; c < width; ++c) {
    EXPECT_EQ(dst[std::size_t(3 * width + c)], src[std::size_t(4 * width + c)]);
    EXPECT_EQ(dst[std::size_t(0 * width + c)], src[std::size_t(1 * width + c)]);
    EXPECT_EQ(dst[std::size_t(1 * width + c)], 0xFFFF) << "rows not named stay untouched";
  }
}

TEST(CopyRows, RefusesBadPoolsAndSlots) {
  backend::cpu cpu;
  auto s = cpu.make_stream();
  std::vector<std::uint16_t> src(4 * 8), dst(4 * 8, 0);
  tensor_view const sv(src.data(), dtype::bf16, {4, 8}, device::cpu());
  tensor_view const dv(dst.data(), dtype::bf16, {4, 8}, device::cpu());
  std::vector<std::int32_t> to{0, 4}, from{0, 1}, one{0};
  auto message = [](auto&& f) -> std::string {
    try {
      f();
    } catch (error const& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(message([&] {
              kernels::copy_rows(cpu, dv, view_of(to), sv, view_of(from), s);
            }).find("copies row 1 to row 4; allowed: sources 0..3, targets 0..3"),
            std::string::npos);
  EXPECT_EQ(dst, std::vector<std::uint16_t>(4 * 8, 0)) << "checked before anything is written";
  EXPECT_NE(message([&] {
              kernels::copy_rows(cpu, dv, view_of(one), sv, view_of(from), s);
            }).find("of one length"),
            std::string::npos);
  std::vector<std::uint16_t> narrow(4 * 4);
  tensor_view const nv(narrow.data(), dtype::bf16, {4, 4}, device::cpu());  // 8-byte rows
  EXPECT_NE(message([&] {
              kernels::copy_rows(cpu, nv, view_of(from), nv, view_of(from), s);
            }).find("multiple of 16 bytes"),
            std::string::npos);
  EXPECT_NE(message([&] {
              kernels::copy_rows(cpu, nv, view_of(from), sv, view_of(from), s);
            }).find("one dtype and width"),
            std::string::npos);
}

}  // namespace
}  // namespace lightcore::test
