// Errors carry the message, the failed condition and file:line.
#include <gtest/gtest.h>

#include <string>

#include "lightcore/core/error.hpp"

namespace {

int checked_div(int a, int b) {
  LC_CHECK(b != 0, "division of " << a << " by zero; the divisor must be non-zero");
  return a / b;
}

TEST(Error, CheckPassesThrough) { EXPECT_EQ(checked_div(6, 3), 2); }

TEST(Error, CheckNamesValueConditionAndLocation) {
  try {
    checked_div(7, 0);
    FAIL() << "LC_CHECK did not throw";
  } catch (lightcore::error const& e) {
    std::string const what = e.what();
    EXPECT_EQ(e.message(), "division of 7 by zero; the divisor must be non-zero");
    EXPECT_NE(what.find("division of 7 by zero"), std::string::npos) << what;
    EXPECT_NE(what.find("check `b != 0` failed"), std::string::npos) << what;
    EXPECT_NE(what.find("test_error.cpp:"), std::string::npos) << what;
    EXPECT_EQ(what.find('/'), std::string::npos) << "the location is the file's base name";
    EXPECT_GT(e.line(), 0);
  }
}

TEST(Error, ThrowHasNoCondition) {
  try {
    LC_THROW("unsupported head dim " << 96 << "; allowed: 64, 128");
  } catch (lightcore::error const& e) {
    std::string const what = e.what();
    EXPECT_NE(what.find("unsupported head dim 96; allowed: 64, 128"), std::string::npos);
    EXPECT_EQ(what.find("check"), std::string::npos) << what;
  }
}

TEST(Error, MessageIsNotEvaluatedWhenCheckPasses) {
  int evaluated = 0;
  auto const side_effect = [&] { return ++evaluated; };
  LC_CHECK(true, "never built " << side_effect());
  EXPECT_EQ(evaluated, 0);
}

TEST(Error, IsARuntimeError) { EXPECT_THROW(LC_CHECK(false, "x"), std::runtime_error); }

}  // namespace
