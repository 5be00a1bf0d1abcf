// The JSON control messages of the KV transfer protocol: every type survives a round trip, and
// malformed messages are refused with the field, the value found and what is allowed.
#include <gtest/gtest.h>

#include <string>
#include <variant>

#include "lightcore/core/error.hpp"
#include "lightcore/pd/messages.hpp"

namespace {

namespace pd = lightcore::pd;
using pd::json;

template <class T>
T round_trip(pd::message const& m) {
  json const j = json::parse(pd::to_json(m).dump());
  pd::message const back = pd::parse_message(j);
  EXPECT_TRUE(std::holds_alternative<T>(back)) << j.dump();
  return std::get<T>(back);
}

std::string parse_error(json const& j) {
  try {
    pd::parse_message(j);
  } catch (lightcore::error const& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(PdMessages, AllocateRoundTrip) {
  pd::allocate_request r{42, {5, 6, 7}, {61, 576, lightcore::dtype::bf16}, 1500, 90'000};
  auto const back = round_trip<pd::allocate_request>(r);
  EXPECT_EQ(back.request_id, 42u);
  EXPECT_EQ(back.tokens, r.tokens);
  EXPECT_EQ(back.layout, r.layout);
  EXPECT_EQ(back.timeout_ms, 1500);
  EXPECT_EQ(back.start_timeout_ms, 90'000);
  EXPECT_EQ(pd::to_json(r)["type"], "allocate");
  EXPECT_EQ(pd::to_json(r)["version"], pd::protocol_version);
}

TEST(PdMessages, AllocateResultRoundTrip) {
  pd::allocate_response ok;
  ok.request_id = 9;
  ok.accepted = true;
  ok.id = 3;
  ok.prefix_hit = 16;
  ok.dst_slots = {100, 101, 7};
  ok.free_slots = 55;
  auto const a = round_trip<pd::allocate_response>(ok);
  EXPECT_TRUE(a.accepted);
  EXPECT_EQ(a.id, 3u);
  EXPECT_EQ(a.prefix_hit, 16);
  EXPECT_EQ(a.dst_slots, ok.dst_slots);
  EXPECT_EQ(a.free_slots, 55);

  pd::allocate_response no;
  no.request_id = 9;
  no.reason = pd::failure::out_of_slots;
  no.message = "full";
  auto const b = round_trip<pd::allocate_response>(no);
  EXPECT_FALSE(b.accepted);
  EXPECT_EQ(b.reason, pd::failure::out_of_slots);
  EXPECT_EQ(b.message, "full");
}

TEST(PdMessages, ProgressDoneAbortRoundTrip) {
  auto const l = round_trip<pd::layer_landed>(pd::layer_landed{7, 12});
  EXPECT_EQ(l.id, 7u);
  EXPECT_EQ(l.layer, 12);
  auto const d = round_trip<pd::transfer_done>(pd::transfer_done{7, 61, 300});
  EXPECT_EQ(d.layers, 61);
  EXPECT_EQ(d.tokens, 300);
  auto const a = round_trip<pd::transfer_abort>(
      pd::transfer_abort{7, pd::failure::timeout, pd::side::decode, "late", true});
  EXPECT_EQ(a.reason, pd::failure::timeout);
  EXPECT_EQ(a.origin, pd::side::decode);
  EXPECT_EQ(a.message, "late");
  EXPECT_TRUE(a.ack);
}

TEST(PdMessages, MalformedMessagesNameTheProblem) {
  json good = pd::to_json(pd::layer_landed{1, 2});

  json j = good;
  j["type"] = "gossip";
  EXPECT_NE(parse_error(j).find("'gossip' is not a message type; allowed: allocate"),
            std::string::npos);
  j = good;
  j["version"] = 2;
  EXPECT_NE(parse_error(j).find("version 2"), std::string::npos);
  j = good;
  j.erase("transfer_id");
  EXPECT_NE(parse_error(j).find("`transfer_id` is missing"), std::string::npos);
  j = good;
  j["transfer_id"] = -4;
  EXPECT_NE(parse_error(j).find("must be an unsigned integer"), std::string::npos);
  j = good;
  j["layer"] = "three";
  EXPECT_NE(parse_error(j).find("`layer` must be an integer"), std::string::npos);
  EXPECT_NE(parse_error(json::array()).find("expected a JSON object"), std::string::npos);

  json alloc = pd::to_json(pd::allocate_request{1, {1, 2}, {}, 10});
  j = alloc;
  j["tokens"] = json::array({1, -2});
  EXPECT_NE(parse_error(j).find("`tokens`[1] = -2 is not allowed"), std::string::npos);
  j = alloc;
  j["tokens"] = json::array();
  EXPECT_NE(parse_error(j).find("is empty"), std::string::npos);
  j = alloc;
  j["layout"]["dtype"] = "f64";
  EXPECT_NE(parse_error(j).find("'f64' is not an element type"), std::string::npos);
  j = alloc;
  j["layout"]["layers"] = 0;
  EXPECT_NE(parse_error(j).find("`layers` = 0 is out of range"), std::string::npos);
  j = alloc;
  j["timeout_ms"] = 0;
  EXPECT_NE(parse_error(j).find("must be >= 1"), std::string::npos);
  j = alloc;
  j["start_timeout_ms"] = -5;
  EXPECT_NE(parse_error(j).find("`start_timeout_ms` = -5 must be >= 1"), std::string::npos)
      << parse_error(j);
  j = alloc;
  j.erase("start_timeout_ms");
  EXPECT_EQ(std::get<pd::allocate_request>(pd::parse_message(j)).start_timeout_ms, 600'000)
      << "absent: the default";

  json abort =
      pd::to_json(pd::transfer_abort{1, pd::failure::cancelled, pd::side::prefill, "", false});
  j = abort;
  j["reason"] = "boredom";
  EXPECT_NE(parse_error(j).find("unknown transfer failure reason 'boredom'"), std::string::npos);
  j = abort;
  j["origin"] = "router";
  EXPECT_NE(parse_error(j).find("'router' is not a side"), std::string::npos);
  j = abort;
  j["reason"] = "none";
  EXPECT_NE(parse_error(j).find("'none' in an abort"), std::string::npos);
}

}  // namespace
