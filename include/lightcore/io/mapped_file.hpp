// mapped_file: a whole file memory-mapped read-only (POSIX mmap), unmapped on destruction.
// Weights are read through the page cache instead of copied into heap buffers: a 700 GB
// checkpoint costs no resident memory until its pages are touched, and the copy to the GPU reads
// straight from the mapping. Move-only; the destructor never throws.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <span>
#include <utility>

#include "lightcore/core/error.hpp"

namespace lightcore::io {

class mapped_file {
 public:
  mapped_file() = default;

  // Maps `path` (a regular file) read-only. An empty file maps to an empty span.
  explicit mapped_file(std::filesystem::path path) : path_(std::move(path)) {
    int const fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    LC_CHECK(fd >= 0, "cannot open " << path_ << " for reading: " << std::strerror(errno));
    struct stat st {};
    int const stat_rc = ::fstat(fd, &st);
    int const stat_errno = errno;
    if (stat_rc != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      LC_CHECK(stat_rc == 0, "cannot stat " << path_ << ": " << std::strerror(stat_errno));
      LC_THROW(path_ << " is not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      // MAP_PRIVATE + PROT_READ: writes through a view fault instead of changing the file.
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      int const map_errno = errno;
      ::close(fd);  // the mapping keeps its own reference to the file
      LC_CHECK(p != MAP_FAILED, "cannot memory-map " << path_ << " (" << size_
                                                     << " bytes): " << std::strerror(map_errno));
      data_ = p;
    } else {
      ::close(fd);
    }
  }

  mapped_file(mapped_file&& o) noexcept
      : path_(std::move(o.path_)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  mapped_file& operator=(mapped_file&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  mapped_file(mapped_file const&) = delete;
  mapped_file& operator=(mapped_file const&) = delete;
  ~mapped_file() { unmap(); }

  std::span<std::byte const> bytes() const noexcept {
    return {static_cast<std::byte const*>(data_), size_};
  }
  std::size_t size() const noexcept { return size_; }
  std::filesystem::path const& path() const noexcept { return path_; }

 private:
  void unmap() noexcept {
    // munmap fails only for arguments that were not a mapping; nothing to report from here.
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = nullptr;
    size_ = 0;
  }

  std::filesystem::path path_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace lightcore::io
