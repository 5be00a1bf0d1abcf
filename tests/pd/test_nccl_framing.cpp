// The NCCL transport's host-side framing: records keep their documented sizes and offsets and
// round-trip through their bytes; unpack refuses a wrong size, magic, version, kind or ack; D's
// checks refuse a header it cannot receive and a layer it must not write, naming the value; runs
// of consecutive slot ids; the unique id's hex form round-trips and refuses bad input.
#include <gtest/gtest.h>

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/pd/nccl_framing.hpp"

namespace {

namespace pd = lightcore::pd;
using lightcore::dtype;

template <class Record>
std::vector<std::byte> bytes_of(Record const& r) {
  auto const a = pd::pack(r);
  return {a.begin(), a.end()};
}

TEST(PdNcclFraming, RecordsHaveTheDocumentedLayout) {
  // docs/pd.md gives these offsets; the peer may be built by another compiler.
  EXPECT_EQ(offsetof(pd::nccl_layer_header, tag), 8u);
  EXPECT_EQ(offsetof(pd::nccl_layer_header, layer), 16u);
  EXPECT_EQ(offsetof(pd::nccl_layer_header, rows), 20u);
  EXPECT_EQ(offsetof(pd::nccl_layer_header, row_bytes), 24u);
  EXPECT_EQ(offsetof(pd::nccl_ack, status), 24u);
  EXPECT_EQ(offsetof(pd::nccl_ack, message_bytes), 28u);
  EXPECT_EQ(offsetof(pd::nccl_ack, message), 32u);
  EXPECT_EQ(offsetof(pd::nccl_hello, layers), 8u);
  EXPECT_EQ(offsetof(pd::nccl_hello, width), 16u);
  EXPECT_EQ(offsetof(pd::nccl_hello, slots), 24u);
  pd::nccl_layer_header h;
  auto const b = bytes_of(h);
  // Magic 0x4b564e44, little-endian: the bytes spell "DNVK".
  EXPECT_EQ(std::string(reinterpret_cast<char const*>(b.data()), 4), "DNVK");
}

TEST(PdNcclFraming, HeaderHelloAndAckRoundTrip) {
  std::mt19937_64 rng(lightcore::test::run_seed());
  pd::nccl_layer_header h;
  h.tag = rng();
  h.layer = 60;
  h.rows = 4097;
  h.row_bytes = 1152;
  pd::nccl_layer_header back;
  ASSERT_EQ(pd::unpack(bytes_of(h), back), "");
  EXPECT_EQ(back.tag, h.tag);
  EXPECT_EQ(back.layer, 60);
  EXPECT_EQ(back.rows, 4097u);
  EXPECT_EQ(back.row_bytes, 1152u);

  pd::kv_layout const layout{61, 576, dtype::bf16};
  pd::nccl_hello hello;
  ASSERT_EQ(pd::unpack(bytes_of(pd::make_hello(layout, 123456)), hello), "");
  EXPECT_EQ(pd::layout_of(hello), layout);
  EXPECT_EQ(hello.slots, 123456);

  pd::nccl_ack ack;
  ASSERT_EQ(pd::unpack(bytes_of(pd::make_ack(h, "")), ack), "");
  EXPECT_EQ(ack.tag, h.tag);
  EXPECT_EQ(ack.layer, 60);
  EXPECT_EQ(ack.rows, 4097u);
  EXPECT_EQ(ack.status, 0u);
  EXPECT_EQ(pd::message_of(ack), "");
  ASSERT_EQ(pd::unpack(bytes_of(pd::make_ack(h, "slot 9 out of range")), ack), "");
  EXPECT_EQ(ack.status, 1u);
  EXPECT_EQ(pd::message_of(ack), "slot 9 out of range");
}

TEST(PdNcclFraming, LongAckMessagesAreCut) {
  std::string const long_reason(1000, 'x');
  pd::nccl_ack ack;
  ASSERT_EQ(pd::unpack(bytes_of(pd::make_ack({}, long_reason)), ack), "");
  EXPECT_EQ(ack.status, 1u);
  EXPECT_EQ(pd::message_of(ack), long_reason.substr(0, pd::nccl_ack_message_capacity));
}

TEST(PdNcclFraming, UnpackRefusesMalformedRecords) {
  pd::nccl_layer_header h;
  h.layer = 3;
  pd::nccl_layer_header out;
  out.layer = -7;  // must stay untouched by a refused unpack

  auto b = bytes_of(h);
  b.pop_back();
  EXPECT_EQ(pd::unpack(b, out), "layer header of 31 bytes; it is 32");

  b = bytes_of(h);
  b[0] = std::byte{'X'};
  EXPECT_EQ(pd::unpack(b, out), "bad magic in a layer header");

  pd::nccl_layer_header v2 = h;
  v2.version = 2;
  EXPECT_EQ(pd::unpack(bytes_of(v2), out), "layer header version 2; this side speaks 1");

  // A hello where a header is expected: the two sides are out of step.
  auto const hello = bytes_of(pd::make_hello({}, 8));
  EXPECT_EQ(pd::unpack(hello, out), "expected a layer header (kind 2), got kind 1");
  EXPECT_EQ(out.layer, -7);

  pd::nccl_ack ack = pd::make_ack(h, "no");
  ack.message_bytes = 225;
  pd::nccl_ack ack_out;
  EXPECT_EQ(pd::unpack(bytes_of(ack), ack_out), "ack message of 225 bytes; at most 224");
  ack = pd::make_ack(h, "");
  ack.status = 7;
  EXPECT_EQ(pd::unpack(bytes_of(ack), ack_out), "ack status 7; allowed 0 (written) or 1 (refused)");
  pd::nccl_hello hello_out;
  EXPECT_EQ(pd::unpack(bytes_of(h), hello_out), "expected a hello (kind 1), got kind 2");
}

TEST(PdNcclFraming, ReceivableHeadersMatchTheRowSizeAndFitThePool) {
  pd::nccl_layer_header h;
  h.rows = 100;
  h.row_bytes = 80;
  EXPECT_EQ(pd::check_receivable(h, 80, 100), "");
  EXPECT_EQ(pd::check_receivable(h, 160, 100),
            "layer header claims rows of 80 bytes; this pool's are 160");
  EXPECT_EQ(pd::check_receivable(h, 80, 99),
            "layer header claims 100 rows; this pool has 99 slots");
  h.rows = 0;
  EXPECT_EQ(pd::check_receivable(h, 80, 0), "");
}

TEST(PdNcclFraming, LayerChecksNameTheBadLayerOrSlot) {
  pd::nccl_layer_header h;
  h.layer = 2;
  h.rows = 3;
  std::vector<std::int32_t> ids{5, 0, 9};
  EXPECT_EQ(pd::check_layer(h, 4, ids, 10), "");
  EXPECT_EQ(pd::check_layer(h, 2, ids, 10), "layer 2 is out of range; this pool has 2 layers");
  h.layer = -1;
  EXPECT_EQ(pd::check_layer(h, 4, ids, 10), "layer -1 is out of range; this pool has 4 layers");
  h.layer = 0;
  EXPECT_EQ(pd::check_layer(h, 4, ids, 9),
            "destination slot 9 (row 2) is out of range; allowed 0..8");
  ids[1] = -3;
  EXPECT_EQ(pd::check_layer(h, 4, ids, 10),
            "destination slot -3 (row 1) is out of range; allowed 0..9");
  EXPECT_EQ(pd::check_layer(h, 4, std::span(ids).first(2), 10), "2 slot ids for 3 rows");
}

TEST(PdNcclFraming, ConsecutiveRuns) {
  std::vector<std::int32_t> const ids{4, 5, 6, 9, 3, 4, 100, 2147483647, 0};
  auto const runs = pd::consecutive_runs(ids);
  ASSERT_EQ(runs.size(), 6u);
  std::vector<std::size_t> index, count;
  std::vector<std::int32_t> first;
  for (auto const& r : runs) {
    index.push_back(r.index);
    first.push_back(r.first);
    count.push_back(r.count);
  }
  EXPECT_EQ(index, (std::vector<std::size_t>{0, 3, 4, 6, 7, 8}));
  EXPECT_EQ(first, (std::vector<std::int32_t>{4, 9, 3, 100, 2147483647, 0}));
  EXPECT_EQ(count, (std::vector<std::size_t>{3, 1, 2, 1, 1, 1}));
  EXPECT_TRUE(pd::consecutive_runs({}).empty());
  // The runs cover every row once, in order, and each is really consecutive.
  std::mt19937_64 rng(lightcore::test::run_seed());
  std::vector<std::int32_t> random(500);
  for (auto& v : random) v = std::int32_t(rng() % 40);
  std::size_t next = 0;
  for (auto const& r : pd::consecutive_runs(random)) {
    ASSERT_EQ(r.index, next);
    for (std::size_t i = 0; i < r.count; ++i)
      ASSERT_EQ(random[r.index + i], r.first + std::int32_t(i));
    next += r.count;
  }
  EXPECT_EQ(next, random.size());
}

TEST(PdNcclFraming, UniqueIdHexRoundTrips) {
  std::mt19937_64 rng(lightcore::test::run_seed());
  pd::nccl_id_bytes id;
  for (auto& b : id) b = std::uint8_t(rng());
  id[0] = 0x00;
  id[1] = 0xff;
  id[2] = 0xa5;
  std::string const hex = pd::nccl_id_to_hex(id);
  ASSERT_EQ(hex.size(), 256u);
  EXPECT_EQ(hex.substr(0, 6), "00ffa5");
  EXPECT_EQ(hex.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(pd::nccl_id_from_hex(hex), id);
  std::string upper = hex;
  for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(pd::nccl_id_from_hex(upper), id);
}

TEST(PdNcclFraming, UniqueIdHexRefusesBadInput) {
  std::string const good(256, 'a');
  auto message_of = [](std::string const& hex) {
    try {
      pd::nccl_id_from_hex(hex);
    } catch (lightcore::error const& e) {
      return e.message();
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(message_of(good.substr(1)),
            "NCCL unique id: 255 hex characters; it needs exactly 256 (128 bytes)");
  EXPECT_EQ(message_of(good + "00"),
            "NCCL unique id: 258 hex characters; it needs exactly 256 (128 bytes)");
  EXPECT_EQ(message_of(""), "NCCL unique id: 0 hex characters; it needs exactly 256 (128 bytes)");
  std::string bad = good;
  bad[17] = 'g';
  EXPECT_EQ(message_of(bad),
            "NCCL unique id: character 17 ('g') is not a hex digit; allowed 0-9, a-f, A-F");
  bad = good;
  bad[255] = ' ';
  EXPECT_EQ(message_of(bad),
            "NCCL unique id: character 255 (' ') is not a hex digit; allowed 0-9, a-f, A-F");
}

}  // namespace
