// shm_region: one POSIX shared-memory segment shared by the server's front end and its engine
// processes, with a header that names its layout and its owner so that stale segments from a
// crashed run are detected and removed.
//
// Names are per server instance ("/<prefix>.<instance>.<what>", see instance_name()), created
// with O_EXCL and mode 0600 (set with fchmod too, so the umask cannot widen it). The creating
// object owns the segment and unlinks it when destroyed; objects from open() only map it.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "lightcore/core/error.hpp"
#include "lightcore/ipc/process.hpp"
#include "lightcore/ipc/signal_cleanup.hpp"

namespace lightcore::ipc {

// What a region holds: a magic number and a layout version that open() checks, so that a
// process never maps a segment written with a different layout.
struct region_layout {
  std::uint64_t magic = 0x4e4f494745524c43ull;  // "LCREGION" read little-endian
  std::uint32_t version = 1;
};

// The first 64 bytes of every region. `ready` is stored (release) last by the creator, after
// the header and the payload's own initialisation, so an opener that reads ready == 1
// (acquire) sees a complete segment.
struct alignas(64) region_header {
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint32_t header_bytes = 0;  // sizeof(region_header): payload offset
  std::uint64_t total_bytes = 0;   // header + payload, bytes
  std::int32_t owner_pid = 0;
  std::uint32_t reserved = 0;
  std::uint64_t owner_start_ticks = 0;  // clock ticks since boot, from /proc/<pid>/stat
  std::atomic<std::uint32_t> ready{0};
};
static_assert(sizeof(region_header) == 64);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

namespace detail {

inline void check_name_part(std::string_view part, char const* what) {
  LC_CHECK(!part.empty() && part.size() <= 100, "shm name " << what << " \"" << part << "\" has "
                                                            << part.size()
                                                            << " characters; allowed 1..100");
  for (char const c : part) {
    bool const ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    LC_CHECK(ok, "shm name " << what << " \"" << part << "\" holds '" << c
                             << "'; allowed: letters, digits, '_' and '-'");
  }
}

inline void check_name(std::string_view name) {
  LC_CHECK(name.size() >= 2 && name.size() <= 200 && name[0] == '/' &&
               name.find('/', 1) == std::string_view::npos,
           "shm name \"" << name
                         << "\" is not allowed; allowed: '/' then 1..199 characters without '/'");
}

// Reads the header of an open segment without trusting it: nullopt when the segment is too
// small or not yet initialised by its creator.
inline std::optional<region_header const*> map_header(int fd, void*& mapping) {
  mapping = nullptr;
  struct stat st = {};
  if (::fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(region_header))) {
    return std::nullopt;
  }
  mapping = ::mmap(nullptr, sizeof(region_header), PROT_READ, MAP_SHARED, fd, 0);
  if (mapping == MAP_FAILED) {
    mapping = nullptr;
    return std::nullopt;
  }
  return static_cast<region_header const*>(mapping);
}

// The owner recorded in segment `name`, or nullopt when it has none yet (being created, or
// left half-created by a crash).
inline std::optional<process_identity> segment_owner(std::string const& name) {
  int const fd = ::shm_open(name.c_str(), O_RDONLY, 0);
  if (fd < 0) return std::nullopt;
  void* mapping = nullptr;
  std::optional<process_identity> owner;
  if (auto const h = map_header(fd, mapping)) {
    if ((*h)->header_bytes == sizeof(region_header) && (*h)->owner_pid > 0) {
      owner = process_identity{(*h)->owner_pid, (*h)->owner_start_ticks};
    }
  }
  if (mapping != nullptr) ::munmap(mapping, sizeof(region_header));
  ::close(fd);
  return owner;
}

}  // namespace detail

// "/<prefix>.<instance>.<what>": one name per server instance and segment, e.g.
// instance_name("lightcore", getpid(), "requests"). prefix and what: letters, digits, '_', '-'.
inline std::string instance_name(std::string_view prefix, std::uint64_t instance,
                                 std::string_view what) {
  detail::check_name_part(prefix, "prefix");
  detail::check_name_part(what, "component");
  std::string name = "/";
  name.append(prefix).append(".").append(std::to_string(instance)).append(".").append(what);
  return name;
}

// The default instance id: this process's pid (the front end's, passed to the engines).
inline std::uint64_t default_instance_id() { return static_cast<std::uint64_t>(::getpid()); }

// Removes every segment "/<prefix>.*" in /dev/shm whose owner is dead, or that still has no
// owner 20 ms after first seen (left half-created by a crash); returns how many. Segments of
// live owners are left alone.
inline int remove_stale(std::string_view prefix) {
  detail::check_name_part(prefix, "prefix");
  std::string const start = std::string(prefix) + ".";
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) return 0;
  int removed = 0;
  while (dirent const* entry = ::readdir(dir)) {
    std::string_view const file(entry->d_name);
    if (file.substr(0, start.size()) != start) continue;
    std::string const name = "/" + std::string(file);
    auto owner = detail::segment_owner(name);
    if (!owner) {  // no header yet: maybe being created right now, so look once more
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      owner = detail::segment_owner(name);
    }
    if (owner && is_alive(*owner)) continue;
    if (::shm_unlink(name.c_str()) == 0) ++removed;
  }
  ::closedir(dir);
  return removed;
}

class shm_region {
 public:
  shm_region() = default;

  // Creates segment `name` with `payload_bytes` usable bytes after the header, zero-filled.
  // A segment already there whose owner is dead (a crashed run) is removed and created anew;
  // one whose owner is alive is an error. `init` runs on the payload before the segment is
  // marked ready, so openers never see a half-initialised payload.
  template <class Init>
  static shm_region create(std::string const& name, std::size_t payload_bytes, region_layout layout,
                           Init&& init) {
    detail::check_name(name);
    LC_CHECK(payload_bytes > 0, "shm_region \"" << name << "\": payload of 0 bytes; allowed >= 1");
    int fd = -1;
    for (int attempt = 0; attempt < 2 && fd < 0; ++attempt) {
      fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, S_IRUSR | S_IWUSR);
      if (fd >= 0) break;
      LC_CHECK(errno == EEXIST,
               "shm_region: shm_open(\"" << name << "\") failed: " << std::strerror(errno));
      remove_if_stale(name);
    }
    LC_CHECK(fd >= 0, "shm_region: \"" << name << "\" still exists after removing it as stale");
    shm_region r;
    r.name_ = name;
    r.owner_ = true;
    r.fd_ = fd;
    register_for_signal_cleanup(name);
    LC_CHECK(::fchmod(fd, S_IRUSR | S_IWUSR) == 0,
             "shm_region: fchmod(\"" << name << "\", 0600) failed: " << std::strerror(errno));
    r.size_ = sizeof(region_header) + payload_bytes;
    LC_CHECK(::ftruncate(fd, static_cast<off_t>(r.size_)) == 0,
             "shm_region: cannot size \"" << name << "\" to " << r.size_
                                          << " bytes: " << std::strerror(errno));
    r.map(PROT_READ | PROT_WRITE);
    auto* h = new (r.base_) region_header;
    h->magic = layout.magic;
    h->version = layout.version;
    h->header_bytes = sizeof(region_header);
    h->total_bytes = r.size_;
    auto const self = self_identity();
    h->owner_pid = self.pid;
    h->owner_start_ticks = self.start_ticks;
    init(r.payload(), payload_bytes);
    h->ready.store(1, std::memory_order_release);
    return r;
  }

  static shm_region create(std::string const& name, std::size_t payload_bytes,
                           region_layout layout = {}) {
    return create(name, payload_bytes, layout, [](void*, std::size_t) {});
  }

  // Maps the existing segment `name`, checking that it is complete and has `layout`.
  static shm_region open(std::string const& name, region_layout layout = {}) {
    detail::check_name(name);
    int const fd = ::shm_open(name.c_str(), O_RDWR, 0);
    LC_CHECK(fd >= 0, "shm_region: cannot open \"" << name << "\": " << std::strerror(errno)
                                                   << " (is the server instance running?)");
    shm_region r;
    r.name_ = name;
    r.fd_ = fd;
    struct stat st = {};
    LC_CHECK(::fstat(fd, &st) == 0, "shm_region: fstat(\"" << name << "\") failed");
    r.size_ = static_cast<std::size_t>(st.st_size);
    LC_CHECK(r.size_ >= sizeof(region_header),
             "shm_region \"" << name << "\" has " << r.size_ << " bytes, too small for its "
                             << sizeof(region_header) << "-byte header");
    r.map(PROT_READ | PROT_WRITE);
    auto const& h = r.header();
    LC_CHECK(h.ready.load(std::memory_order_acquire) == 1,
             "shm_region \"" << name << "\" is not initialised (its creator has not finished)");
    LC_CHECK(h.magic == layout.magic, "shm_region \"" << name << "\" has magic 0x" << std::hex
                                                      << h.magic << "; expected 0x" << layout.magic
                                                      << " (a different kind)");
    LC_CHECK(h.version == layout.version, "shm_region \""
                                              << name << "\" has layout version " << h.version
                                              << "; this build reads " << layout.version
                                              << " (front end and engine built apart?)");
    LC_CHECK(h.header_bytes == sizeof(region_header) && h.total_bytes == r.size_,
             "shm_region \"" << name << "\" records " << h.total_bytes << " bytes but is "
                             << r.size_ << " bytes (truncated or corrupt)");
    return r;
  }

  shm_region(shm_region&& o) noexcept { *this = std::move(o); }
  shm_region& operator=(shm_region&& o) noexcept {
    if (this != &o) {
      reset();
      name_ = std::move(o.name_);
      base_ = std::exchange(o.base_, nullptr);
      size_ = std::exchange(o.size_, 0);
      fd_ = std::exchange(o.fd_, -1);
      owner_ = std::exchange(o.owner_, false);
    }
    return *this;
  }
  shm_region(shm_region const&) = delete;
  shm_region& operator=(shm_region const&) = delete;
  ~shm_region() { reset(); }

  std::string const& name() const noexcept { return name_; }
  bool is_owner() const noexcept { return owner_; }
  bool valid() const noexcept { return base_ != nullptr; }
  region_header const& header() const noexcept { return *static_cast<region_header*>(base_); }
  void* payload() const noexcept { return static_cast<std::byte*>(base_) + sizeof(region_header); }
  std::size_t payload_bytes() const noexcept { return size_ - sizeof(region_header); }
  std::size_t total_bytes() const noexcept { return size_; }
  int fd() const noexcept { return fd_; }

 private:
  void map(int prot) {
    void* p = ::mmap(nullptr, size_, prot, MAP_SHARED, fd_, 0);
    LC_CHECK(p != MAP_FAILED, "shm_region: mmap of \""
                                  << name_ << "\" (" << size_
                                  << " bytes) failed: " << std::strerror(errno));
    base_ = p;
  }

  // Removes `name` when its recorded owner is dead; throws when the owner is alive. A segment
  // without a complete header may be in creation by a live process: wait briefly for it.
  static void remove_if_stale(std::string const& name) {
    std::optional<process_identity> owner;
    for (int i = 0; i < 20 && !owner; ++i) {
      owner = detail::segment_owner(name);
      if (!owner) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    LC_CHECK(!owner || !is_alive(*owner),
             "shm_region: \"" << name << "\" is in use by live process " << owner->pid
                              << "; allowed: a name no running server instance uses (another "
                                 "instance id or prefix)");
    ::shm_unlink(name.c_str());
  }

  void reset() noexcept {
    if (base_ != nullptr) ::munmap(base_, size_);
    if (fd_ >= 0) ::close(fd_);
    if (owner_) {
      ::shm_unlink(name_.c_str());
      unregister_from_signal_cleanup(name_);
    }
    base_ = nullptr;
    size_ = 0;
    fd_ = -1;
    owner_ = false;
  }

  std::string name_;
  void* base_ = nullptr;
  std::size_t size_ = 0;
  int fd_ = -1;
  bool owner_ = false;
};

}  // namespace lightcore::ipc
