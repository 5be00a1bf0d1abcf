// safetensors round trips through the writer and the memory-mapped reader: every viewable dtype,
// random shapes and contents, scalars and empty tensors, metadata, streaming in pieces, the
// alignment the writer guarantees, and the writer's own errors.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "io_test_util.hpp"
#include "lightcore/io/safetensors.hpp"
#include "lightcore/io/safetensors_writer.hpp"

namespace lightcore {
namespace {

using io::safetensors_decl;
using io::safetensors_file;
using io::safetensors_writer;
using io::st_dtype;

std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::byte> v(n);
  for (auto& b : v) b = std::byte(rng() & 0xFF);
  return v;
}

TEST(Safetensors, DtypeTable) {
  for (auto const& d : io::st_dtypes) {
    EXPECT_EQ(io::st_dtype_from_name(d.name), d.id) << d.name;
    EXPECT_EQ(&io::info_of(d.id), &d) << "st_dtypes is not indexed by st_dtype at " << d.name;
    if (d.view_as && d.id != st_dtype::boolean) {
      EXPECT_EQ(io::st_dtype_of(*d.view_as), d.id) << d.name;
      EXPECT_EQ(size_of(*d.view_as), d.size) << d.name;
    }
  }
  EXPECT_FALSE(io::st_dtype_from_name("bf16").has_value());  // names are case-sensitive
  EXPECT_FALSE(io::st_dtype_from_name("F4").has_value());
}

TEST(Safetensors, RoundTripOfRandomTensors) {
  auto rng = test::test_rng();
  test::scratch_dir dir;
  std::vector<dtype> const types = {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3,
                                    dtype::i32, dtype::i64,  dtype::u8};
  // Random shapes (rank 0..4, odd extents; every fifth may hold empty dimensions), each in a
  // random dtype.
  std::vector<std::vector<std::byte>> data;
  std::vector<io::named_view> views;
  std::vector<std::vector<std::int64_t>> shapes;
  std::vector<dtype> dts;
  for (int i = 0; i < 24; ++i) {
    int const rank = int(rng() % 5);
    std::vector<std::int64_t> shape;
    for (int d = 0; d < rank; ++d) shape.push_back(std::int64_t(rng() % 7) + (i % 5 ? 1 : 0));
    dtype const t = types[rng() % types.size()];
    dims const s{std::span<std::int64_t const>(shape)};
    shapes.push_back(shape);
    dts.push_back(t);
    data.push_back(random_bytes(rng, std::size_t(s.product()) * size_of(t)));
  }
  for (std::size_t i = 0; i < data.size(); ++i)
    views.push_back(
        {"t." + std::to_string(i),
         tensor_view(data[i].data(), dts[i], dims(std::span<std::int64_t const>(shapes[i])))});
  io::write_safetensors(dir / "a.safetensors", views, {{"format", "pt"}, {"note", "x y"}});

  safetensors_file const f(dir / "a.safetensors");
  EXPECT_EQ(f.size(), views.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x y");
  EXPECT_EQ(f.data_offset() % 8, 0u) << "the data area must start 8-byte aligned";
  for (std::size_t i = 0; i < views.size(); ++i) {
    std::string const& name = views[i].name;
    ASSERT_TRUE(f.contains(name)) << name;
    tensor_view const v = f.tensor(name);
    EXPECT_EQ(v.type(), dts[i]) << name;
    EXPECT_EQ(v.shape(), views[i].view.shape()) << name;
    EXPECT_TRUE(v.where().is_cpu());
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(v.data()) % size_of(dts[i]), 0u) << name;
    ASSERT_EQ(v.nbytes(), data[i].size()) << name;
    EXPECT_EQ(std::memcmp(v.data(), data[i].data(), data[i].size()), 0) << name;
    EXPECT_EQ(f.bytes(name).size(), data[i].size()) << name;
  }
}

TEST(Safetensors, TypedAccessOfKnownValues) {
  test::scratch_dir dir;
  std::vector<float> const f32 = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
  std::vector<bf16> const b16 = {bf16(1.0f), bf16(-3.0f), bf16(0.5f)};
  std::int64_t scalar = -42;
  std::vector<io::named_view> const views = {
      {"w", tensor_view(const_cast<float*>(f32.data()), dtype::f32, {2, 3})},
      {"b", tensor_view(const_cast<bf16*>(b16.data()), dtype::bf16, {3})},
      {"s", tensor_view(&scalar, dtype::i64, dims{})},
  };
  io::write_safetensors(dir / "k.safetensors", views);
  safetensors_file const f(dir / "k.safetensors");
  auto const w = f.tensor("w").as<float, 2>();
  EXPECT_EQ(w(1, 2), -0.5f);
  EXPECT_EQ(w(0, 1), -2.0f);
  EXPECT_EQ(float((f.tensor("b").as<bf16, 1>())(1)), -3.0f);
  tensor_view const s = f.tensor("s");
  EXPECT_EQ(s.rank(), 0);
  EXPECT_EQ(*s.data_as<std::int64_t>(), -42);
  EXPECT_TRUE(f.metadata().empty());
}

TEST(Safetensors, StreamedInPiecesAndInAnyTensorOrder) {
  auto rng = test::test_rng();
  test::scratch_dir dir;
  auto const a = random_bytes(rng, 1000 * 2);
  auto const b = random_bytes(rng, 37 * 4);
  {
    safetensors_writer w(dir / "s.safetensors",
                         {{"a", st_dtype::bf16, {10, 100}}, {"b", st_dtype::f32, {37}}});
    w.write("b", b);
    for (std::size_t off = 0; off < a.size(); off += 300)
      w.append("a", std::span(a).subspan(off, std::min<std::size_t>(300, a.size() - off)));
    EXPECT_FALSE(std::filesystem::exists(dir / "s.safetensors")) << "visible before finish()";
    w.finish();
  }
  safetensors_file const f(dir / "s.safetensors");
  ASSERT_EQ(f.bytes("a").size(), a.size());
  EXPECT_EQ(std::memcmp(f.bytes("a").data(), a.data(), a.size()), 0);
  EXPECT_EQ(std::memcmp(f.bytes("b").data(), b.data(), b.size()), 0);
  // Larger elements first, so the f32 tensor is 4-byte aligned after 2000 bf16 bytes.
  EXPECT_EQ(f.entries()[0].name, "b");
  EXPECT_FALSE(std::filesystem::exists(dir / "s.safetensors.partial"));
}

TEST(Safetensors, EmptyFile) {
  test::scratch_dir dir;
  io::write_safetensors(dir / "e.safetensors", std::span<io::named_view const>{});
  safetensors_file const f(dir / "e.safetensors");
  EXPECT_EQ(f.size(), 0u);
  EXPECT_THROW((void)f.tensor("x"), error);
}

TEST(Safetensors, ReaderIsMovable) {
  test::scratch_dir dir;
  float x[4] = {1, 2, 3, 4};
  io::named_view const v{"x", tensor_view(x, dtype::f32, {4})};
  io::write_safetensors(dir / "m.safetensors", std::span(&v, 1));
  safetensors_file f(dir / "m.safetensors");
  void const* data = f.tensor("x").data();
  safetensors_file g(std::move(f));
  EXPECT_EQ(g.tensor("x").data(), data) << "a move must keep the mapping";
  EXPECT_EQ((g.tensor("x").as<float, 1>())(3), 4.0f);
}

TEST(SafetensorsWriter, Errors) {
  test::scratch_dir dir;
  auto const path = dir / "w.safetensors";
  EXPECT_THROW(safetensors_writer(path, {{"a", st_dtype::f32, {1}}, {"a", st_dtype::f32, {2}}}),
               error);
  EXPECT_THROW(safetensors_writer(path, {{"__metadata__", st_dtype::f32, {1}}}), error);
  EXPECT_THROW(safetensors_writer(path, {{"", st_dtype::f32, {1}}}), error);
  EXPECT_THROW(safetensors_writer(path, {{"a", st_dtype::f32, {-1}}}), error);
  EXPECT_THROW(safetensors_writer(path, {{"a", st_dtype::f64, {INT64_MAX, 4}}}), error);

  std::vector<std::byte> const four(4 * sizeof(float));
  {
    safetensors_writer w(path, {{"a", st_dtype::f32, {4}}});
    EXPECT_THROW(w.append("b", four), error);                     // not declared
    EXPECT_THROW(w.write("a", std::span(four).first(8)), error);  // wrong size
    w.append("a", std::span(four).first(8));
    EXPECT_THROW(w.append("a", four), error);  // past its end
    try {
      w.finish();
      ADD_FAILURE() << "finish() accepted an incomplete tensor";
    } catch (error const& e) {
      EXPECT_NE(e.message().find("8 of 16 bytes"), std::string::npos) << e.message();
    }
  }
  // An abandoned writer leaves nothing behind.
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(dir / "w.safetensors.partial"));
  {
    safetensors_writer w(path, {{"a", st_dtype::f32, {4}}});
    w.write("a", four);
    w.finish();
    EXPECT_THROW(w.finish(), error);
    EXPECT_THROW(w.append("a", four), error);
  }
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_THROW(safetensors_writer(dir / "no" / "such" / "dir.safetensors", {}), error);
}

TEST(SafetensorsWriter, RefusesNonContiguousOrDeviceViews) {
  test::scratch_dir dir;
  float x[6] = {};
  tensor_view const t = tensor_view(x, dtype::f32, {2, 3}).transpose(0, 1);
  io::named_view const v{"t", t};
  EXPECT_THROW(io::write_safetensors(dir / "t.safetensors", std::span(&v, 1)), error);
  io::named_view const d{"d", tensor_view(x, dtype::f32, {6}, {1}, device::cuda(0))};
  EXPECT_THROW(io::write_safetensors(dir / "d.safetensors", std::span(&d, 1)), error);
}

}  // namespace
}  // namespace lightcore
