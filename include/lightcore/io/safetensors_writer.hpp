// safetensors_writer: writes a valid .safetensors file whose tensors are declared up front and
// whose data arrives afterwards, whole or in consecutive pieces, in any tensor order. The header
// is final from the start, so a checkpoint generator can stream a tensor far larger than the
// memory it is generated in. The file appears under its name only when finish() succeeds; until
// then it is written to "<name>.partial", which the destructor removes.
//
// Layout as the format's reference writer makes it: the header is padded with spaces so that the
// data area starts 8-byte aligned, and tensors are stored by decreasing element size (stable in
// declaration order), so that every tensor is aligned to its element size.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/io/safetensors.hpp"

namespace lightcore::io {

// A tensor to be written: name, element type and shape.
struct safetensors_decl {
  std::string name;
  st_dtype type = st_dtype::u8;
  std::vector<std::int64_t> shape;
};

class safetensors_writer {
 public:
  // Creates "<path>.partial" and writes the header. Names must be unique, non-empty and not
  // "__metadata__"; extents non-negative.
  safetensors_writer(std::filesystem::path path, std::vector<safetensors_decl> const& tensors,
                     std::map<std::string, std::string> const& metadata = {})
      : path_(std::move(path)), partial_(path_.string() + ".partial") {
    std::vector<std::size_t> order(tensors.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return size_of(tensors[a].type) > size_of(tensors[b].type);
    });
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::uint64_t offset = 0;
    for (std::size_t i : order) {
      auto const& d = tensors[i];
      LC_CHECK(!d.name.empty() && d.name != "__metadata__",
               "safetensors_writer " << path_ << ": tensor name \"" << d.name
                                     << "\" is not allowed (empty or __metadata__)");
      for (auto const e : d.shape)
        LC_CHECK(e >= 0, "safetensors_writer " << path_ << ": tensor \"" << d.name
                                               << "\" has a negative extent " << e);
      auto const bytes = detail::st_byte_size(d.shape, size_of(d.type));
      LC_CHECK(bytes.has_value(), "safetensors_writer " << path_ << ": tensor \"" << d.name
                                                        << "\" overflows a 64-bit byte count");
      LC_CHECK(index_.emplace(d.name, slots_.size()).second,
               "safetensors_writer " << path_ << ": tensor \"" << d.name << "\" declared twice");
      slots_.push_back({d.name, offset, *bytes, 0});
      header[d.name] = {{"dtype", name_of(d.type)},
                        {"shape", d.shape},
                        {"data_offsets", {offset, offset + *bytes}}};
      offset += *bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    data_offset_ = 8 + text.size();
    data_bytes_ = offset;

    fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    LC_CHECK(fd_ >= 0, "cannot create " << partial_ << ": " << std::strerror(errno));
    std::byte length[8];
    for (int i = 0; i < 8; ++i) length[i] = std::byte((text.size() >> (8 * i)) & 0xFF);
    try {
      write_at(0, length);
      write_at(8, std::as_bytes(std::span(text)));
    } catch (...) {
      abandon();  // the destructor does not run for a constructor that throws
      throw;
    }
  }

  safetensors_writer(safetensors_writer&& o) noexcept
      : path_(std::move(o.path_)),
        partial_(std::move(o.partial_)),
        fd_(std::exchange(o.fd_, -1)),
        data_offset_(o.data_offset_),
        data_bytes_(o.data_bytes_),
        slots_(std::move(o.slots_)),
        index_(std::move(o.index_)) {}
  safetensors_writer& operator=(safetensors_writer&&) = delete;
  safetensors_writer(safetensors_writer const&) = delete;
  safetensors_writer& operator=(safetensors_writer const&) = delete;

  // An unfinished file is abandoned: closed and removed, never left half-written under its name.
  ~safetensors_writer() { abandon(); }

  // Appends the next bytes of tensor `name` (consecutive calls continue where the last stopped).
  void append(std::string_view name, std::span<std::byte const> bytes) {
    LC_CHECK(fd_ >= 0, "safetensors_writer " << path_ << ": append after finish()");
    auto const it = index_.find(name);
    LC_CHECK(it != index_.end(),
             "safetensors_writer " << path_ << ": tensor \"" << name << "\" was not declared");
    slot& s = slots_[it->second];
    LC_CHECK(bytes.size() <= s.size - s.written,
             "safetensors_writer " << path_ << ": tensor \"" << name << "\" holds " << s.size
                                   << " bytes; " << s.written << " are written and " << bytes.size()
                                   << " more would overflow it");
    write_at(data_offset_ + s.offset + s.written, bytes);
    s.written += bytes.size();
  }
  // Writes a whole tensor at once.
  void write(std::string_view name, std::span<std::byte const> bytes) {
    auto const it = index_.find(name);
    LC_CHECK(it == index_.end() || slots_[it->second].written == 0,
             "safetensors_writer " << path_ << ": tensor \"" << name << "\" is already written");
    LC_CHECK(it == index_.end() || bytes.size() == slots_[it->second].size,
             "safetensors_writer " << path_ << ": tensor \"" << name << "\" holds "
                                   << slots_[it->second].size << " bytes; got " << bytes.size());
    append(name, bytes);
  }

  // Checks that every tensor is complete, flushes and moves the file to its name.
  void finish() {
    LC_CHECK(fd_ >= 0, "safetensors_writer " << path_ << ": finish() called twice");
    for (auto const& s : slots_)
      LC_CHECK(s.written == s.size, "safetensors_writer " << path_ << ": tensor \"" << s.name
                                                          << "\" is incomplete: " << s.written
                                                          << " of " << s.size << " bytes written");
    int const fd = std::exchange(fd_, -1);
    bool const synced = ::fsync(fd) == 0;
    int const sync_errno = errno;
    bool const closed = ::close(fd) == 0;
    int const close_errno = errno;
    if (!synced || !closed) {
      std::error_code ignored;
      std::filesystem::remove(partial_, ignored);
      LC_THROW("cannot write " << partial_ << ": "
                               << std::strerror(synced ? close_errno : sync_errno));
    }
    std::error_code ec;
    std::filesystem::rename(partial_, path_, ec);
    LC_CHECK(!ec, "cannot rename " << partial_ << " to " << path_ << ": " << ec.message());
  }

  // Bytes of the whole file once finished.
  std::uint64_t file_bytes() const noexcept { return data_offset_ + data_bytes_; }
  std::filesystem::path const& path() const noexcept { return path_; }

 private:
  struct slot {
    std::string name;
    std::uint64_t offset;   // in the data area
    std::uint64_t size;     // bytes
    std::uint64_t written;  // bytes appended so far
  };

  void write_at(std::uint64_t offset, std::span<std::byte const> bytes) {
    while (!bytes.empty()) {
      ssize_t const n = ::pwrite(fd_, bytes.data(), bytes.size(), off_t(offset));
      if (n < 0 && errno == EINTR) continue;
      LC_CHECK(n > 0, "cannot write " << bytes.size() << " bytes at offset " << offset << " of "
                                      << partial_ << ": " << std::strerror(errno));
      bytes = bytes.subspan(std::size_t(n));
      offset += std::uint64_t(n);
    }
  }
  void abandon() noexcept {
    if (fd_ < 0) return;
    ::close(fd_);
    fd_ = -1;
    ::unlink(partial_.c_str());
  }

  std::filesystem::path path_;
  std::filesystem::path partial_;
  int fd_ = -1;
  std::uint64_t data_offset_ = 0;
  std::uint64_t data_bytes_ = 0;
  std::vector<slot> slots_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// A named host tensor to write; the view must be contiguous and on the host.
struct named_view {
  std::string name;
  tensor_view view;
};

// Writes `tensors` to `path` in one go.
inline void write_safetensors(std::filesystem::path const& path,
                              std::span<named_view const> tensors,
                              std::map<std::string, std::string> const& metadata = {}) {
  std::vector<safetensors_decl> decls;
  for (auto const& t : tensors) {
    LC_CHECK(t.view.where().is_cpu() && t.view.is_contiguous(),
             "write_safetensors " << path << ": tensor \"" << t.name << "\" must be a contiguous "
                                  << "host view; got " << t.view);
    auto const s = t.view.shape().span();
    decls.push_back({t.name, st_dtype_of(t.view.type()), {s.begin(), s.end()}});
  }
  safetensors_writer w(path, decls, metadata);
  for (auto const& t : tensors)
    w.write(t.name, {static_cast<std::byte const*>(t.view.data()), t.view.nbytes()});
  w.finish();
}

}  // namespace lightcore::io
