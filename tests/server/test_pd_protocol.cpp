// The JSON shapes the pd-router and the prefill/decode instances exchange besides the transfer
// messages (examples/server/pd_protocol.hpp): a request's parameters, a sampled token, the load,
// the role names. Round trips keep every field; malformed input is refused naming the field.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "examples/server/pd_protocol.hpp"

namespace lightcore::test {
namespace {

using server::wire_params;

wire_params sample_params() {
  wire_params p;
  p.sampling.temperature = 0.7f;
  p.sampling.top_k = 40;
  p.sampling.top_p = 0.9f;
  p.sampling.min_p = 0.05f;
  p.sampling.repetition_penalty = 1.1f;
  p.sampling.presence_penalty = -0.5f;
  p.sampling.frequency_penalty = 0.25f;
  p.sampling.num_logprobs = 3;
  p.sampling.seed = 0xfedcba9876543210ull;  // above INT64_MAX: must survive as unsigned
  p.max_new_tokens = 77;
  p.stop_count = 2;
  p.stop_ids[0] = 1;
  p.stop_ids[1] = 129279;
  return p;
}

// A message's text holds every fragment.
void expect_refused(nlohmann::json const& j, std::string const& fragment) {
  try {
    (void)server::params_from_json(j);
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (std::exception const& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(PdProtocol, ParamsRoundTripEveryField) {
  wire_params const p = sample_params();
  wire_params const q = server::params_from_json(
      nlohmann::json::parse(server::params_to_json(p).dump()));  // through the text, as on the wire
  EXPECT_EQ(q.sampling.temperature, p.sampling.temperature);
  EXPECT_EQ(q.sampling.top_k, p.sampling.top_k);
  EXPECT_EQ(q.sampling.top_p, p.sampling.top_p);
  EXPECT_EQ(q.sampling.min_p, p.sampling.min_p);
  EXPECT_EQ(q.sampling.repetition_penalty, p.sampling.repetition_penalty);
  EXPECT_EQ(q.sampling.presence_penalty, p.sampling.presence_penalty);
  EXPECT_EQ(q.sampling.frequency_penalty, p.sampling.frequency_penalty);
  EXPECT_EQ(q.sampling.num_logprobs, p.sampling.num_logprobs);
  EXPECT_EQ(q.sampling.seed, p.sampling.seed);
  EXPECT_EQ(q.max_new_tokens, 77);
  ASSERT_EQ(q.stop_count, 2);
  EXPECT_EQ(q.stop_ids[0], 1);
  EXPECT_EQ(q.stop_ids[1], 129279);
}

TEST(PdProtocol, MalformedParamsAreRefusedByField) {
  nlohmann::json const good = server::params_to_json(sample_params());
  auto without = [&](char const* key) {
    nlohmann::json j = good;
    j.erase(key);
    return j;
  };
  expect_refused(without("temperature"), "temperature");
  expect_refused(without("seed"), "seed");
  expect_refused(without("stop_ids"), "stop_ids");
  nlohmann::json j = good;
  j["max_new_tokens"] = 0;
  expect_refused(j, "max_new_tokens");
  j = good;
  j["seed"] = -1;
  expect_refused(j, "seed");
  j = good;
  j["top_k"] = "many";
  expect_refused(j, "top_k");
  j = good;
  j["stop_ids"] = nlohmann::json::array();
  for (int i = 0; i < server::max_stop_token_ids + 1; ++i) j["stop_ids"].push_back(i);
  expect_refused(j, "at most 16");
  expect_refused(nlohmann::json::array(), "object");
}

TEST(PdProtocol, TokensRoundTripAndANaNLogprobIsLeftOut) {
  server::pd_token t;
  t.token = 4242;
  t.logprob = -1.5f;
  t.index = 3;
  t.finished = "length";
  t.top_ids = {4242, 7};
  t.top_logprobs = {-1.5f, -2.0f};
  auto const u = server::token_from_json(nlohmann::json::parse(to_json(t).dump()));
  EXPECT_EQ(u.token, 4242);
  EXPECT_EQ(u.logprob, -1.5f);
  EXPECT_EQ(u.index, 3);
  EXPECT_EQ(u.finished, "length");
  EXPECT_EQ(u.top_ids, t.top_ids);
  EXPECT_EQ(u.top_logprobs, t.top_logprobs);

  t.logprob = std::numeric_limits<float>::quiet_NaN();
  nlohmann::json const j = to_json(t);
  EXPECT_FALSE(j.contains("logprob")) << j.dump();
  nlohmann::json bad = j;
  bad["top_logprobs"] = {-1.0};
  EXPECT_THROW((void)server::token_from_json(bad), lightcore::error);
  bad = j;
  bad.erase("token");
  EXPECT_THROW((void)server::token_from_json(bad), lightcore::error);
}

TEST(PdProtocol, LoadAndRoleNames) {
  server::pd_load const l{10, 2, 3, 500, 1000, 1};
  auto const m = server::load_from_json(to_json(l));
  EXPECT_EQ(m.queued_tokens, 10);
  EXPECT_EQ(m.waiting, 2);
  EXPECT_EQ(m.running, 3);
  EXPECT_EQ(m.kv_free, 500);
  EXPECT_EQ(m.kv_capacity, 1000);
  EXPECT_EQ(m.transfers, 1);
  for (auto r : {server::server_role::single, server::server_role::prefill,
                 server::server_role::decode, server::server_role::router})
    EXPECT_EQ(server::role_from_name(server::name_of(r)), r);
  try {
    (void)server::role_from_name("router");
    ADD_FAILURE() << "'router' was taken as a role";
  } catch (std::exception const& e) {
    EXPECT_NE(std::string(e.what()).find("allowed: single, prefill, decode, pd-router"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW((void)server::tokens_from_json(nlohmann::json{{"tokens", {1, -2}}}, "tokens"),
               lightcore::error);
  EXPECT_THROW(
      (void)server::tokens_from_json(nlohmann::json{{"tokens", nlohmann::json::array()}}, "tokens"),
      lightcore::error);
}

}  // namespace
}  // namespace lightcore::test
