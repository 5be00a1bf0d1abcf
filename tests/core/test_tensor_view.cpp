// tensor_view and typed_view: indexing, slicing, reshaping, typed access, and the errors for
// each misuse.
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/core/tensor_view.hpp"

namespace lc = lightcore;

namespace {

// Expects `fn` to throw lightcore::error whose message contains `needle`.
template <class Fn>
void expect_error(Fn&& fn, std::string const& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected lightcore::error containing '" << needle << "'";
  } catch (lc::error const& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::vector<float> iota_floats(std::size_t n) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 0.0f);
  return v;
}

TEST(TensorView, ContiguousStridesAndSizes) {
  auto data = iota_floats(2 * 3 * 4);
  lc::tensor_view v(data.data(), lc::dtype::f32, {2, 3, 4});
  EXPECT_EQ(v.rank(), 3);
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.nbytes(), 96u);
  EXPECT_EQ(v.strides(), (lc::dims{12, 4, 1}));
  EXPECT_EQ(v.size(-1), 4);
  EXPECT_EQ(v.stride(0), 12);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.where(), lc::device::cpu());
}

TEST(TensorView, TypedIndexingMatchesRowMajor) {
  auto data = iota_floats(2 * 3 * 4);
  auto t = lc::tensor_view(data.data(), lc::dtype::f32, {2, 3, 4}).as<float, 3>();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) EXPECT_EQ(t(i, j, k), float(i * 12 + j * 4 + k));
  auto row = t[1];
  EXPECT_EQ(row(2, 3), 23.0f);
  EXPECT_EQ(row.size(0), 3);
}

TEST(TensorView, SliceSelectTranspose) {
  auto data = iota_floats(4 * 6);
  lc::tensor_view v(data.data(), lc::dtype::f32, {4, 6});
  auto s = v.slice(1, 2, 5);  // columns 2..4
  EXPECT_EQ(s.shape(), (lc::dims{4, 3}));
  EXPECT_FALSE(s.is_contiguous());
  auto st = s.as<float, 2>();
  EXPECT_EQ(st(3, 0), 20.0f);
  EXPECT_EQ(st(0, 2), 4.0f);

  auto r = v.select(0, 2);  // row 2
  EXPECT_EQ(r.rank(), 1);
  EXPECT_EQ((r.as<float, 1>()(5)), 17.0f);

  auto t = v.transpose(0, 1);
  EXPECT_EQ(t.shape(), (lc::dims{6, 4}));
  EXPECT_EQ((t.as<float, 2>()(5, 3)), 23.0f);
  EXPECT_FALSE(t.is_contiguous());

  auto rows = v.slice(0, 1, 3);  // a row range of a contiguous view stays contiguous
  EXPECT_TRUE(rows.is_contiguous());
  EXPECT_EQ((rows.as<float, 2>()(0, 0)), 6.0f);
}

TEST(TensorView, RandomSubviewsAgreeWithFlatIndex) {
  std::mt19937 rng(std::random_device{}());
  auto data = iota_floats(5 * 7 * 9);
  lc::tensor_view v(data.data(), lc::dtype::f32, {5, 7, 9});
  for (int trial = 0; trial < 200; ++trial) {
    int const d = int(rng() % 3);
    std::int64_t const n = v.size(d);
    std::int64_t const b = rng() % n, e = b + 1 + rng() % (n - b);
    auto s = v.slice(d, b, e).as<float, 3>();
    std::int64_t const i = rng() % s.size(0), j = rng() % s.size(1), k = rng() % s.size(2);
    std::int64_t idx[3] = {i, j, k};
    idx[d] += b;
    EXPECT_EQ(s(i, j, k), float(idx[0] * 63 + idx[1] * 9 + idx[2]));
  }
}

TEST(TensorView, ReshapeInfersOneExtent) {
  auto data = iota_floats(24);
  lc::tensor_view v(data.data(), lc::dtype::f32, {2, 3, 4});
  auto r = v.reshape({6, -1});
  EXPECT_EQ(r.shape(), (lc::dims{6, 4}));
  EXPECT_EQ((r.as<float, 2>()(5, 3)), 23.0f);
}

TEST(TensorView, MisuseGivesClearErrors) {
  auto data = iota_floats(24);
  lc::tensor_view v(data.data(), lc::dtype::f32, {2, 3, 4});
  expect_error([&] { v.slice(1, 2, 4); }, "slice [2, 4) of dimension 1 is out of range");
  expect_error([&] { v.select(0, 2); }, "index 2 is out of range for dimension 0");
  expect_error([&] { v.size(3); }, "dimension 3 is out of range for a view of rank 3");
  expect_error([&] { v.as<lc::bf16, 3>(); }, "view holds f32 but was accessed as bf16");
  expect_error([&] { v.as<float, 2>(); }, "requested as rank 2");
  expect_error([&] { v.reshape({5, 5}); }, "(24 elements) to [5, 5]");
  expect_error([&] { v.reshape({-1, -1}); }, "at most one extent may be -1");
  expect_error([&] { v.transpose(0, 2).reshape({24}); }, "reshape of a non-contiguous view");
  expect_error([&] { lc::dims d{1, 2, 3, 4, 5, 6, 7}; }, "exceeds lightcore's maximum rank 6");
  expect_error(
      [&] {
        lc::tensor_view(data.data(), lc::dtype::f32, {2, -3});
      },
      "negative extent -3");
}

TEST(Tensor, OwnsAndFillsOnTheCpuBackend) {
  lc::backend::cpu host;
  auto s = host.make_stream();
  lc::tensor<lc::backend::cpu> t(host, lc::dtype::bf16, {3, 5});
  EXPECT_EQ(t.nbytes(), 30u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data()) % lc::backend::cpu::alignment, 0u);
  lc::fill(host, t.view(), lc::bf16(1.5f), s);
  auto v = t.as<lc::bf16, 2>();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) EXPECT_EQ(float(v(i, j)), 1.5f);
  lc::tensor<lc::backend::cpu> moved = std::move(t);
  EXPECT_EQ(t.data(), nullptr);  // NOLINT: testing the moved-from state
  EXPECT_NE(moved.data(), nullptr);
  expect_error([&] { lc::fill(host, moved.view(), 1.0f, s); }, "fill of a bf16 view with a f32");
}

}  // namespace
