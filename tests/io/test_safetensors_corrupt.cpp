// Corrupt and unusual safetensors files, built byte by byte: each must fail when opened (or when
// the tensor is requested, for valid files lightcore cannot view) with a message naming the file
// and the problem.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "lightcore/io/safetensors.hpp"

namespace lightcore {
namespace {

using io::safetensors_file;

struct corrupt_case {
  char const* what;
  std::string bytes;
  std::vector<std::string> says;
};

std::string const f32x2_a = R"("a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";

TEST(SafetensorsCorrupt, EachFailsOnOpenWithAClearMessage) {
  using test::safetensors_bytes;
  std::vector<corrupt_case> const cases = {
      {"empty file", "", {"truncated", "0 bytes"}},
      {"truncated length", std::string("\x10\x00\x00", 3), {"truncated", "3 bytes"}},
      {"header length past the end",
       safetensors_bytes("{}", 0, 1000),
       {"header length 1000", "exceeds the 2 bytes"}},
      {"truncated data",
       safetensors_bytes("{" + f32x2_a + "}", 4),
       {"\"a\"", "[0, 8)", "run past the data area of 4 bytes"}},
      {"offsets out of range",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})", 8),
       {"\"a\"", "[8, 12)", "run past"}},
      {"overlapping tensors",
       safetensors_bytes(
           "{" + f32x2_a + R"(, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
           12),
       {"\"b\"", "overlaps tensor \"a\"", "ends at 8"}},
      {"hole between tensors",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                         12),
       {"bytes [4, 8)", "belong to no tensor", "\"b\""}},
      {"trailing bytes",
       safetensors_bytes("{" + f32x2_a + "}", 12),
       {"last 4 bytes", "belong to no tensor"}},
      {"size does not match shape",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8),
       {"\"a\"", "hold 8 bytes", "needs 12"}},
      {"begin after end",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8),
       {"data_offsets", "begin must not exceed end"}},
      {"bad JSON", safetensors_bytes(R"({"a": {"dtype": )", 0), {"not valid JSON"}},
      {"not UTF-8",
       safetensors_bytes(
           "{\"\xff\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [0, 0]}}", 0),
       {"not valid JSON"}},
      {"not an object", safetensors_bytes("[1, 2]", 0), {"does not start with '{'"}},
      {"unknown dtype",
       safetensors_bytes(R"({"a": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}})", 8),
       {"dtype", "\"F12\"", "not a safetensors dtype", "BF16", "F8_E4M3"}},
      {"duplicate tensor",
       safetensors_bytes("{" + f32x2_a + ", " + f32x2_a + "}", 8),
       {"\"a\"", "more than once"}},
      {"missing data_offsets",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [2]}})", 8),
       {"data_offsets", "missing"}},
      {"negative extent",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8),
       {"shape", "non-negative integers"}},
      {"three offsets",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}})", 8),
       {"data_offsets", "two non-negative integers"}},
      {"tensor entry not an object",
       safetensors_bytes(R"({"a": [1, 2]})", 0),
       {"tensor \"a\"", "JSON object"}},
      {"overflowing shape",
       safetensors_bytes(
           R"({"a": {"dtype": "F64", "shape": [4611686018427387904, 8], "data_offsets": [0, 8]}})",
           8),
       {"overflows"}},
      {"metadata not strings",
       safetensors_bytes(R"({"__metadata__": {"format": 1}})", 0),
       {"__metadata__", "\"format\"", "must be a string"}},
      {"metadata not an object",
       safetensors_bytes(R"({"__metadata__": "pt"})", 0),
       {"__metadata__", "object of strings"}},
  };
  test::scratch_dir dir;
  for (auto const& c : cases) {
    auto const path = dir / "bad.safetensors";
    test::write_bytes(path, c.bytes);
    try {
      safetensors_file const f(path);
      ADD_FAILURE() << c.what << ": opened without an error";
    } catch (error const& e) {
      std::string const msg = e.message();
      EXPECT_NE(msg.find(path.string()), std::string::npos)
          << c.what << ": message does not name the file: " << msg;
      for (auto const& s : c.says)
        EXPECT_NE(msg.find(s), std::string::npos)
            << c.what << ": message lacks \"" << s << "\": " << msg;
    }
  }
}

TEST(SafetensorsCorrupt, HeaderLengthAboveTheLimit) {
  // A sparse file long enough to hold the declared header, so that only the 100 MB limit fails
  // (and no 100 MB of text is ever parsed).
  test::scratch_dir dir;
  auto const path = dir / "huge.safetensors";
  std::uint64_t const declared = io::safetensors_max_header_bytes + 1;
  test::write_bytes(path, test::safetensors_bytes("{", 0, declared));
  std::filesystem::resize_file(path, 8 + declared);
  try {
    safetensors_file const f(path);
    ADD_FAILURE() << "opened without an error";
  } catch (error const& e) {
    EXPECT_NE(e.message().find("exceeds the limit of 100000000 bytes"), std::string::npos)
        << e.message();
  }
}

TEST(SafetensorsCorrupt, MissingFileAndDirectory) {
  test::scratch_dir dir;
  EXPECT_THROW(safetensors_file(dir / "absent.safetensors"), error);
  EXPECT_THROW(safetensors_file(dir.path()), error);
}

TEST(SafetensorsCorrupt, HeaderPaddingAndEmptyTensorsAreValid) {
  test::scratch_dir dir;
  // Trailing spaces pad the header; a zero-size tensor may sit anywhere in the tiling.
  std::string header =
      R"({"z": {"dtype": "BF16", "shape": [0, 3], "data_offsets": [3, 3]},
          "q": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
          "a": {"dtype": "I32", "shape": [1], "data_offsets": [3, 7]}})";
  // Whatever the header's length, at least 5 spaces and an 8-byte aligned data area; "a" is then
  // misaligned (at 3), but "z", at the same offset, is empty and so may be viewed.
  header.append(5 + (8 - (header.size() + 5) % 8) % 8, ' ');
  test::write_bytes(dir / "ok.safetensors", test::safetensors_bytes(header, 7));
  safetensors_file const f(dir / "ok.safetensors");
  EXPECT_EQ(f.size(), 3u);
  EXPECT_EQ(f.data_offset() % 8, 0u);
  EXPECT_EQ(f.tensor("z").numel(), 0);
  EXPECT_EQ(f.tensor("z").shape(), (dims{0, 3}));
  EXPECT_EQ(f.tensor("q").numel(), 3);
  EXPECT_THROW((void)f.tensor("a"), error);
  EXPECT_EQ(f.bytes("a").size(), 4u);
}

TEST(SafetensorsCorrupt, ValidFilesLightcoreCannotView) {
  test::scratch_dir dir;
  std::string const header =
      R"({"d": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
          "m": {"dtype": "BOOL", "shape": [2], "data_offsets": [8, 10]},
          "u": {"dtype": "U8", "shape": [1, 1, 1, 1, 1, 1, 2], "data_offsets": [10, 12]},
          "f": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
          "x": {"dtype": "U8", "shape": [1], "data_offsets": [16, 17]},
          "g": {"dtype": "F32", "shape": [1], "data_offsets": [17, 21]}})";
  auto const path = dir / "v.safetensors";
  // Pad the header so that the data area starts 8-byte aligned, as the reference writer does.
  std::string padded = header;
  padded.append((8 - padded.size() % 8) % 8, ' ');
  test::write_bytes(path, test::safetensors_bytes(padded, 21));
  safetensors_file const f(path);
  EXPECT_EQ(f.size(), 6u);

  auto expect_error = [&](char const* name, std::vector<std::string> const& says) {
    try {
      (void)f.tensor(name);
      ADD_FAILURE() << name << ": viewed without an error";
    } catch (error const& e) {
      for (auto const& s : says)
        EXPECT_NE(e.message().find(s), std::string::npos)
            << name << ": message lacks \"" << s << "\": " << e.message();
    }
  };
  // F64 is a known dtype but has no lightcore dtype: the raw bytes stay readable.
  expect_error("d", {"\"d\"", "F64", "cannot view", "BF16", "F8_E4M3"});
  EXPECT_EQ(f.bytes("d").size(), 8u);
  EXPECT_EQ(f.tensor("m").type(), dtype::u8);  // BOOL is viewed as u8
  expect_error("u", {"\"u\"", "rank 7", "at most rank 6"});
  EXPECT_EQ(f.tensor("f").type(), dtype::f32);
  expect_error("g", {"\"g\"", "not aligned", "4-byte"});
  expect_error("nope", {"no tensor named \"nope\""});
}

}  // namespace
}  // namespace lightcore
