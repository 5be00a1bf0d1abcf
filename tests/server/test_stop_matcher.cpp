// Stop strings over streamed text: a stop split across pieces, overlapping and multiple
// candidates, no hold-back beyond the longest stop prefix, Unicode, and a randomised check
// against searching the whole text received so far after every piece.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "examples/server/api/stop_matcher.hpp"

namespace lightcore {
namespace {

using server::stop_matcher;

// Feeds pieces; returns everything emitted (finish() included when no stop was found).
std::string run(stop_matcher& m, std::vector<std::string> const& pieces) {
  std::string out;
  for (auto const& p : pieces) {
    auto const r = m.feed(p);
    out += r.text;
    if (r.stopped) return out;
  }
  return out + m.finish();
}

TEST(StopMatcher, NoStopsPassesThrough) {
  stop_matcher m;
  auto const r = m.feed("hello");
  EXPECT_EQ(r.text, "hello");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(m.held_bytes(), 0u);
  EXPECT_EQ(m.finish(), "");
}

TEST(StopMatcher, StopInsideOnePiece) {
  stop_matcher m({"END"});
  auto const r = m.feed("abcENDxyz");
  EXPECT_EQ(r.text, "abc");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(*m.matched(), "END");
  EXPECT_EQ(m.feed("more").text, "");  // nothing after a stop
}

TEST(StopMatcher, StopSplitAcrossPieces) {
  stop_matcher m({"END"});
  auto r = m.feed("abcE");
  EXPECT_EQ(r.text, "abc");
  EXPECT_EQ(m.held_bytes(), 1u);
  r = m.feed("N");
  EXPECT_EQ(r.text, "");
  EXPECT_EQ(m.held_bytes(), 2u);
  r = m.feed("Dtail");
  EXPECT_EQ(r.text, "");
  EXPECT_TRUE(r.stopped);
}

TEST(StopMatcher, FalseStartIsReleased) {
  stop_matcher m({"END"});
  EXPECT_EQ(m.feed("xEN").text, "x");
  auto const r = m.feed("Tyz");  // "ENT" is not a stop
  EXPECT_EQ(r.text, "ENTyz");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(m.held_bytes(), 0u);
}

TEST(StopMatcher, HoldsOnlyTheLongestStopPrefix) {
  stop_matcher m({"abc", "xyz"});
  // "ab" can begin "abc"; nothing else is held.
  auto r = m.feed("hello ab");
  EXPECT_EQ(r.text, "hello ");
  EXPECT_EQ(m.held_bytes(), 2u);
  // "b" alone begins no stop: not held.
  stop_matcher n({"abc"});
  EXPECT_EQ(n.feed("zb").text, "zb");
  EXPECT_EQ(n.held_bytes(), 0u);
  // Never more than the longest stop minus one byte.
  stop_matcher k({"aaaa"});
  EXPECT_EQ(k.feed("aaaaaaa").text, "");  // the stop is found first
  stop_matcher k2({"aaab"});
  EXPECT_EQ(k2.feed("aaaaaa").text, "aaa");
  EXPECT_EQ(k2.held_bytes(), 3u);
  EXPECT_EQ(k2.finish(), "aaa");
}

TEST(StopMatcher, OverlappingCandidatesAndEarliestWins) {
  // "aab" while "aaab" comes in: the shorter suffix match must not hide the real stop.
  stop_matcher m({"aab"});
  EXPECT_EQ(run(m, {"a", "a", "a", "b", "c"}), "a");
  // Two stops: the one that starts first wins, even if the other ends first.
  stop_matcher two({"bcdef", "cd"});
  EXPECT_EQ(run(two, {"abcdefg"}), "a");
  EXPECT_EQ(*two.matched(), "bcdef");
  stop_matcher split({"bcdef", "cd"});
  // Streamed, "cd" completes before "bcdef" could, and generation ends there.
  EXPECT_EQ(run(split, {"ab", "c", "d", "ef"}), "ab");
  EXPECT_EQ(*split.matched(), "cd");
  stop_matcher multi({"\n\n", "###"});
  EXPECT_EQ(run(multi, {"one\n", "two#", "##three"}), "one\ntwo");
}

TEST(StopMatcher, EmptyStopsAreIgnored) {
  stop_matcher m({"", "x"});
  EXPECT_EQ(run(m, {"abc"}), "abc");
}

TEST(StopMatcher, Unicode) {
  // "。" (3 bytes) and an emoji stop (4 bytes) fed byte-wise and character-wise.
  stop_matcher m({"。\n", "🛑"});
  auto r = m.feed("你好。");
  EXPECT_EQ(r.text, "你好");  // "。" may begin "。\n"
  r = m.feed("再见");
  EXPECT_EQ(r.text, "。再见");
  r = m.feed("🛑后");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
  // Held text ends on a character boundary: what is emitted is valid UTF-8.
  stop_matcher e({"é!"});
  EXPECT_EQ(e.feed("café").text, "caf");
  EXPECT_EQ(e.finish(), "é");
}

TEST(StopMatcher, RandomSplitsMatchTheWholeText) {
  std::mt19937 gen(1234);
  std::string const alphabet = "ab\n#";
  for (int trial = 0; trial < 2000; ++trial) {
    std::uniform_int_distribution<int> len(0, 24), ch(0, int(alphabet.size()) - 1);
    std::uniform_int_distribution<int> stop_len(1, 4), nstops(1, 3);
    std::string text;
    for (int i = len(gen); i > 0; --i) text += alphabet[std::size_t(ch(gen))];
    std::vector<std::string> stops;
    for (int s = nstops(gen); s > 0; --s) {
      std::string st;
      for (int i = stop_len(gen); i > 0; --i) st += alphabet[std::size_t(ch(gen))];
      stops.push_back(st);
    }
    std::vector<std::string> pieces;
    for (std::size_t at = 0; at < text.size();) {
      std::uniform_int_distribution<std::size_t> step(1, 5);
      auto const n = std::min(step(gen), text.size() - at);
      pieces.push_back(text.substr(at, n));
      at += n;
    }
    // Expected: after each piece, the text so far is searched for every stop; the first time
    // one occurs, the reply is the text before the earliest occurrence (generation ends there).
    std::string want = text;
    bool found = false;
    std::string prefix;
    for (auto const& p : pieces) {
      prefix += p;
      std::size_t cut = std::string::npos;
      for (auto const& s : stops) cut = std::min(cut, prefix.find(s));
      if (cut != std::string::npos) {
        want = prefix.substr(0, cut);
        found = true;
        break;
      }
    }
    stop_matcher m(stops);
    std::string got;
    std::size_t max_held = 0;
    for (auto const& p : pieces) {
      auto const r = m.feed(p);
      got += r.text;
      max_held = std::max(max_held, m.held_bytes());
      if (r.stopped) break;
    }
    got += m.finish();
    ASSERT_EQ(got, want) << "text '" << text << "' stops[0] '" << stops[0] << "'";
    EXPECT_EQ(m.stopped(), found);
    std::size_t longest = 0;
    for (auto const& s : stops) longest = std::max(longest, s.size());
    EXPECT_LE(max_held, longest - 1);
  }
}

}  // namespace
}  // namespace lightcore
