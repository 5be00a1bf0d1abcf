// The incremental SSE parser: whole events out of arbitrarily split input, the three line
// endings, comments, multi-line data, [DONE].
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "bench/serving/sse_parser.hpp"

namespace {

using lightcore::loadgen::sse_event;
using lightcore::loadgen::sse_parser;

std::vector<sse_event> parse_pieces(std::vector<std::string_view> const& pieces) {
  sse_parser parser;
  std::vector<sse_event> events;
  for (std::string_view const p : pieces) {
    parser.feed(p, [&](sse_event&& e) { events.push_back(std::move(e)); });
  }
  return events;
}

std::vector<std::string> data_of(std::vector<sse_event> const& events) {
  std::vector<std::string> out;
  for (sse_event const& e : events) out.push_back(e.data);
  return out;
}

constexpr std::string_view openai_stream =
    "data: {\"choices\":[{\"text\":\"a\"}]}\n\n"
    ": keep-alive\n\n"
    "data: {\"choices\":[{\"text\":\"b\\n\"}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"completion_tokens\":2}}\n\n"
    "data: [DONE]\n\n";

std::vector<std::string> const openai_events = {
    "{\"choices\":[{\"text\":\"a\"}]}", "{\"choices\":[{\"text\":\"b\\n\"}]}",
    "{\"choices\":[],\"usage\":{\"completion_tokens\":2}}", "[DONE]"};

TEST(SseParser, WholeStreamInOnePiece) {
  EXPECT_EQ(data_of(parse_pieces({openai_stream})), openai_events);
}

TEST(SseParser, EverySplitIntoTwoPiecesGivesTheSameEvents) {
  for (std::size_t cut = 0; cut <= openai_stream.size(); ++cut) {
    auto const events = parse_pieces({openai_stream.substr(0, cut), openai_stream.substr(cut)});
    EXPECT_EQ(data_of(events), openai_events) << "cut at byte " << cut;
  }
}

TEST(SseParser, ByteByByte) {
  std::vector<std::string_view> bytes;
  for (std::size_t i = 0; i < openai_stream.size(); ++i)
    bytes.push_back(openai_stream.substr(i, 1));
  EXPECT_EQ(data_of(parse_pieces(bytes)), openai_events);
}

TEST(SseParser, CrLfAndCrLineEndingsIncludingACrLfSplitAcrossPieces) {
  EXPECT_EQ(data_of(parse_pieces({"data: x\r\n\r\ndata: y\r\n\r\n"})),
            (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(data_of(parse_pieces({"data: x\r\rdata: y\r\r"})),
            (std::vector<std::string>{"x", "y"}));
  // "\r" ends one piece and "\n" starts the next: still one line end, not a blank line that
  // would dispatch early and then a second blank line.
  auto const events = parse_pieces({"data: a\r", "\ndata: b\r", "\n\r", "\n"});
  EXPECT_EQ(data_of(events), (std::vector<std::string>{"a\nb"}));
}

TEST(SseParser, CommentsAndUnknownFieldsAreIgnored) {
  auto const events = parse_pieces({": ping\n\nid: 7\nretry: 10\n: note\ndata: z\n\n:\n\n"});
  EXPECT_EQ(data_of(events), (std::vector<std::string>{"z"}));
}

TEST(SseParser, MultiLineDataFieldFormsAndEventName) {
  auto const events = parse_pieces({"event: delta\ndata:one\ndata:  two\ndata\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "delta");
  // "data:one" has no space to strip; "data:  two" loses exactly one; "data" is an empty line.
  EXPECT_EQ(events[0].data, "one\n two\n");
}

TEST(SseParser, EventWithoutDataIsNotDispatchedAndNameDoesNotLeak) {
  auto const events = parse_pieces({"event: ping\n\ndata: x\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "");
  EXPECT_EQ(events[0].data, "x");
}

TEST(SseParser, EmptyDataLineStillDispatches) {
  auto const events = parse_pieces({"data:\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "");
}

TEST(SseParser, UnfinishedEventIsHeldAndReported) {
  sse_parser parser;
  std::vector<sse_event> events;
  auto sink = [&](sse_event&& e) { events.push_back(std::move(e)); };
  EXPECT_FALSE(parser.has_partial_event());
  parser.feed("data: [DO", sink);
  EXPECT_TRUE(events.empty());
  EXPECT_TRUE(parser.has_partial_event());
  parser.feed("NE]\n", sink);
  EXPECT_TRUE(events.empty()) << "no blank line yet";
  EXPECT_TRUE(parser.has_partial_event());
  parser.feed("\n", sink);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "[DONE]");
  EXPECT_FALSE(parser.has_partial_event());
  parser.feed("data: cut", sink);
  parser.reset();
  EXPECT_FALSE(parser.has_partial_event());
  parser.feed("data: fresh\n\n", sink);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].data, "fresh");
}

}  // namespace
