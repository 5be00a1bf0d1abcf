// backend::cpu: allocation alignment, copies, fills of every element size, events.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "lightcore/backend/cpu.hpp"

namespace {

using lightcore::backend::cpu;

TEST(BackendCpu, AllocatesAligned) {
  cpu host;
  for (std::size_t bytes : {1u, 3u, 255u, 256u, 4097u}) {
    void* p = host.allocate(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % cpu::alignment, 0u);
    host.deallocate(p, bytes);
  }
  EXPECT_EQ(host.allocate(0), nullptr);
}

TEST(BackendCpu, FillsEveryElementSize) {
  cpu host;
  auto s = host.make_stream();
  std::vector<std::uint64_t> buf(8, 0);
  host.fill(buf.data(), 16, 2, 0xbeef, s);
  auto const* h = reinterpret_cast<std::uint16_t const*>(buf.data());
  for (int i = 0; i < 16; ++i) EXPECT_EQ(h[i], 0xbeef);
  host.fill(buf.data(), 8, 4, 0x12345678u, s);
  auto const* w = reinterpret_cast<std::uint32_t const*>(buf.data());
  for (int i = 0; i < 8; ++i) EXPECT_EQ(w[i], 0x12345678u);
  host.fill(buf.data(), 8, 8, 0x0102030405060708ull, s);
  for (auto x : buf) EXPECT_EQ(x, 0x0102030405060708ull);
  host.fill(buf.data(), 64, 1, 0xab, s);
  for (auto x : buf) EXPECT_EQ(x, 0xababababababababull);
  EXPECT_THROW(host.fill(buf.data(), 1, 3, 0, s), lightcore::error);
}

TEST(BackendCpu, CopyAndEvents) {
  cpu host;
  auto s = host.make_stream();
  std::vector<int> a{1, 2, 3, 4}, b(4, 0);
  auto start = host.make_event(), end = host.make_event();
  start.record(s);
  host.copy(b.data(), a.data(), sizeof(int) * 4, s);
  end.record(s);
  EXPECT_EQ(a, b);
  EXPECT_GE(cpu::elapsed_ms(start, end), 0.0f);
  auto m = host.memory();
  EXPECT_GT(m.total_bytes, 0u);
  EXPECT_LE(m.free_bytes, m.total_bytes);
}

}  // namespace
