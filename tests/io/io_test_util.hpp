// Shared helpers of the io tests: a scratch directory per test and file helpers.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace lightcore::test {

// A fresh directory under the system's temp directory, removed with everything in it at the end
// of the test.
class scratch_dir {
 public:
  scratch_dir() {
    auto const* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "lightcore_io_";
    if (info) name += std::string(info->test_suite_name()) + "_" + info->name();
    for (char& c : name)
      if (c == '/') c = '_';
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / (name + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~scratch_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  scratch_dir(scratch_dir const&) = delete;
  scratch_dir& operator=(scratch_dir const&) = delete;

  std::filesystem::path const& path() const noexcept { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline std::string read_text(std::filesystem::path const& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_bytes(std::filesystem::path const& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A safetensors file from a raw header text and a data area: for corrupt files no writer makes.
inline std::string safetensors_bytes(std::string_view header, std::size_t data_bytes,
                                     std::uint64_t declared_length = UINT64_MAX) {
  std::uint64_t const n = declared_length == UINT64_MAX ? header.size() : declared_length;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[std::size_t(i)] = char((n >> (8 * i)) & 0xFF);
  out += header;
  out.append(data_bytes, '\x5A');
  return out;
}

inline std::filesystem::path data_dir() { return LIGHTCORE_TEST_DATA_DIR; }
inline std::filesystem::path config_fixture(std::string_view name) {
  return data_dir() / "configs" / name;
}

}  // namespace lightcore::test
