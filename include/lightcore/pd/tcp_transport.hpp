// A kv_transport over one TCP connection, for host pools in different processes (CPU backend,
// tests across processes, and machines without a faster path). The decode instance runs a
// tcp_kv_server over its pool; the prefill instance's tcp_transport connects to it, gathers a
// layer's rows into a staging buffer, sends them in one length-prefixed frame, and completes the
// layer when the server acknowledges that it scattered them. docs/pd.md specifies the framing.
//
//   pd::tcp_kv_server server(decode_pool.layers());                // decode instance
//   pd::tcp_transport link(prefill_pool.layers(), "127.0.0.1", server.port());
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

static_assert(std::endian::native == std::endian::little,
              "the pd TCP framing is little-endian and copies headers as bytes");

// Every frame: this 32-byte header, then payload_bytes of payload.
struct tcp_frame_header {
  std::uint32_t magic = 0x4b565044;  // "DPVK" as little-endian bytes 'D' 'P' 'V' 'K'
  std::uint16_t version = 1;
  std::uint16_t kind = 0;  // tcp_frame_kind
  std::uint64_t tag = 0;   // layer/ack: the sender's sequence number of the layer copy
  std::int32_t layer = 0;  // layer: the KV layer
  std::uint32_t rows = 0;  // layer: rows in the payload
  std::uint64_t payload_bytes = 0;
};
static_assert(sizeof(tcp_frame_header) == 32);

enum class tcp_frame_kind : std::uint16_t {
  hello = 1,  // server -> client on accept: i32 layers, u32 dtype, i64 width, i64 slots
  layer = 2,  // client -> server: rows x i32 destination slot ids, then rows x row_bytes data
  ack = 3,    // server -> client: u32 status (0: scattered), then an error message's bytes
};

// Largest payload either side accepts: a frame claiming more is refused before allocating.
inline constexpr std::uint64_t tcp_max_payload = std::uint64_t{1} << 32;  // 4 GiB

namespace detail {

struct socket_fd {
  int fd = -1;
  socket_fd() = default;
  explicit socket_fd(int f) : fd(f) {}
  socket_fd(socket_fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  socket_fd& operator=(socket_fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd = std::exchange(o.fd, -1);
    }
    return *this;
  }
  ~socket_fd() { reset(); }
  void reset() noexcept {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// Whole-buffer send and receive; false when the peer closed or the socket failed.
inline bool send_all(int fd, void const* data, std::size_t n) {
  auto const* p = static_cast<char const*>(data);
  while (n > 0) {
    ssize_t const k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= std::size_t(k);
  }
  return true;
}
inline bool recv_all(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t const k = ::recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= std::size_t(k);
  }
  return true;
}

inline bool send_frame(int fd, tcp_frame_kind kind, std::uint64_t tag, std::int32_t layer,
                       std::uint32_t rows, void const* payload, std::size_t bytes) {
  tcp_frame_header h;
  h.kind = std::uint16_t(kind);
  h.tag = tag;
  h.layer = layer;
  h.rows = rows;
  h.payload_bytes = bytes;
  return send_all(fd, &h, sizeof h) && (bytes == 0 || send_all(fd, payload, bytes));
}

// Reads a header and checks magic, version and size; an empty string when it is fine.
inline std::string recv_header(int fd, tcp_frame_header& h, bool& closed) {
  closed = !recv_all(fd, &h, sizeof h);
  if (closed) return "connection closed";
  if (h.magic != tcp_frame_header{}.magic) return "bad frame magic";
  if (h.version != 1) return "frame version " + std::to_string(h.version) + "; this side speaks 1";
  if (h.payload_bytes > tcp_max_payload)
    return "frame payload of " + std::to_string(h.payload_bytes) + " bytes exceeds the limit";
  return {};
}

struct hello_payload {
  std::int32_t layers = 0;
  std::uint32_t type = 0;  // lightcore::dtype value
  std::int64_t width = 0;
  std::int64_t slots = 0;
};
static_assert(sizeof(hello_payload) == 24);

}  // namespace detail

// The decode side: accepts connections and scatters every layer frame's rows into its pool's
// layer tensors, then acknowledges. The rows it writes belong to slots the kv_receiver reserved
// for the transfer, so no pool bookkeeping happens here. One thread per connection.
class tcp_kv_server {
 public:
  // Listens on `address`:`port` (port 0: an ephemeral port, see port()).
  explicit tcp_kv_server(std::vector<tensor_view> layers, std::string const& address = "127.0.0.1",
                         std::uint16_t port = 0)
      : layers_(std::move(layers)) {
    LC_CHECK(!layers_.empty(), "tcp_kv_server needs at least one layer");
    for (tensor_view const& t : layers_)
      LC_CHECK(t.where().kind == device_kind::cpu && t.rank() == 2 && t.is_contiguous() &&
                   t.size(0) == layers_[0].size(0) && t.size(1) == layers_[0].size(1) &&
                   t.type() == layers_[0].type(),
               "tcp_kv_server: every layer must be a host [slots, width] tensor like layer 0");
    listen_ = detail::socket_fd(::socket(AF_INET, SOCK_STREAM, 0));
    LC_CHECK(listen_.fd >= 0, "tcp_kv_server: socket() failed: " << std::strerror(errno));
    int const one = 1;
    ::setsockopt(listen_.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    LC_CHECK(::inet_pton(AF_INET, address.c_str(), &a.sin_addr) == 1,
             "tcp_kv_server: '" << address << "' is not an IPv4 address");
    LC_CHECK(
        ::bind(listen_.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0,
        "tcp_kv_server: bind to " << address << ":" << port << " failed: " << std::strerror(errno));
    LC_CHECK(::listen(listen_.fd, 16) == 0,
             "tcp_kv_server: listen failed: " << std::strerror(errno));
    socklen_t len = sizeof a;
    ::getsockname(listen_.fd, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  tcp_kv_server(tcp_kv_server const&) = delete;
  tcp_kv_server& operator=(tcp_kv_server const&) = delete;

  // Stops accepting, closes every connection and joins the threads.
  ~tcp_kv_server() {
    stopping_ = true;
    ::shutdown(listen_.fd, SHUT_RDWR);
    acceptor_.join();
    std::vector<std::thread> threads;
    {
      std::lock_guard lock(mutex_);
      for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
      threads = std::move(connections_);
    }
    for (std::thread& t : threads) t.join();
  }

  std::uint16_t port() const noexcept { return port_; }
  std::uint64_t rows_received() const noexcept { return rows_.load(); }
  std::uint64_t frames_refused() const noexcept { return refused_.load(); }

 private:
  void accept_loop() {
    for (;;) {
      int const fd = ::accept(listen_.fd, nullptr, nullptr);
      if (fd < 0) {
        if (errno == EINTR) continue;
        return;  // shut down (or the listening socket failed)
      }
      std::lock_guard lock(mutex_);
      if (stopping_) {
        ::close(fd);
        return;
      }
      open_.push_back(fd);
      connections_.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    detail::socket_fd owned(fd);
    int const one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    detail::hello_payload hello{std::int32_t(layers_.size()), std::uint32_t(layers_[0].type()),
                                layers_[0].size(1), layers_[0].size(0)};
    if (detail::send_frame(fd, tcp_frame_kind::hello, 0, 0, 0, &hello, sizeof hello)) {
      std::vector<unsigned char> staging;
      for (;;) {
        tcp_frame_header h;
        bool closed = false;
        std::string error = detail::recv_header(fd, h, closed);
        if (closed || !error.empty()) break;  // a stream out of sync cannot be resumed
        if (h.kind != std::uint16_t(tcp_frame_kind::layer)) break;
        staging.resize(h.payload_bytes);
        if (!detail::recv_all(fd, staging.data(), staging.size())) break;
        error = scatter(h, staging);
        if (!error.empty()) ++refused_;
        std::vector<unsigned char> ack(4 + error.size());
        std::uint32_t const status = error.empty() ? 0 : 1;
        std::memcpy(ack.data(), &status, 4);
        std::memcpy(ack.data() + 4, error.data(), error.size());
        if (!detail::send_frame(fd, tcp_frame_kind::ack, h.tag, h.layer, h.rows, ack.data(),
                                ack.size()))
          break;
      }
    }
    std::lock_guard lock(mutex_);
    std::erase(open_, fd);
  }

  // Checks the frame against the pool, then writes its rows; the reason when it refuses.
  std::string scatter(tcp_frame_header const& h, std::vector<unsigned char> const& payload) {
    std::size_t const row = std::size_t(layers_[0].size(1)) * layers_[0].element_size();
    std::int64_t const slots = layers_[0].size(0);
    if (h.layer < 0 || std::size_t(h.layer) >= layers_.size())
      return "layer " + std::to_string(h.layer) + " is out of range";
    if (payload.size() != std::size_t(h.rows) * (4 + row))
      return "payload of " + std::to_string(payload.size()) + " bytes for " +
             std::to_string(h.rows) + " rows of " + std::to_string(row) + " bytes";
    std::vector<std::int32_t> ids(h.rows);
    std::memcpy(ids.data(), payload.data(), ids.size() * 4);
    for (std::int32_t const d : ids)
      if (d < 0 || d >= slots) return "destination slot " + std::to_string(d) + " out of range";
    auto* base = static_cast<unsigned char*>(layers_[std::size_t(h.layer)].data());
    unsigned char const* data = payload.data() + ids.size() * 4;
    for (std::size_t i = 0; i < ids.size(); ++i)
      std::memcpy(base + std::size_t(ids[i]) * row, data + i * row, row);
    rows_ += h.rows;
    return {};
  }

  std::vector<tensor_view> layers_;  // per layer [slots, width]
  detail::socket_fd listen_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> rows_{0};
  std::atomic<std::uint64_t> refused_{0};
  std::mutex mutex_;
  std::vector<int> open_;  // connection sockets, to shut down when stopping
  std::vector<std::thread> connections_;
  std::thread acceptor_;
};

// The prefill side: a kv_transport whose destination is a tcp_kv_server. A writer thread
// gathers each queued layer into a staging buffer and sends it; a reader thread completes the
// layer when its ack arrives. A broken connection fails every pending and later copy.
class tcp_transport {
 public:
  tcp_transport(std::vector<tensor_view> src, std::string const& address, std::uint16_t port)
      : src_(std::move(src)) {
    LC_CHECK(!src_.empty(), "tcp_transport needs at least one layer");
    for (tensor_view const& t : src_)
      LC_CHECK(t.where().kind == device_kind::cpu && t.rank() == 2 && t.is_contiguous() &&
                   t.size(0) == src_[0].size(0) && t.size(1) == src_[0].size(1) &&
                   t.type() == src_[0].type(),
               "tcp_transport: every layer must be a host [slots, width] tensor like layer 0");
    layout_ = {std::int32_t(src_.size()), src_[0].size(1), src_[0].type()};
    sock_ = detail::socket_fd(::socket(AF_INET, SOCK_STREAM, 0));
    LC_CHECK(sock_.fd >= 0, "tcp_transport: socket() failed: " << std::strerror(errno));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    LC_CHECK(::inet_pton(AF_INET, address.c_str(), &a.sin_addr) == 1,
             "tcp_transport: '" << address << "' is not an IPv4 address");
    LC_CHECK(::connect(sock_.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0,
             "tcp_transport: connect to " << address << ":" << port
                                          << " failed: " << std::strerror(errno));
    int const one = 1;
    ::setsockopt(sock_.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    tcp_frame_header h;
    bool closed = false;
    std::string const e = detail::recv_header(sock_.fd, h, closed);
    detail::hello_payload hello;
    LC_CHECK(e.empty() && h.kind == std::uint16_t(tcp_frame_kind::hello) &&
                 h.payload_bytes == sizeof hello &&
                 detail::recv_all(sock_.fd, &hello, sizeof hello),
             "tcp_transport: no valid hello from " << address << ":" << port << " (" << e << ")");
    kv_layout const theirs{hello.layers, hello.width, static_cast<dtype>(hello.type)};
    LC_CHECK(theirs == layout_, "tcp_transport: the prefill pool is "
                                    << layout_ << ", the decode pool " << theirs
                                    << "; rows are copied as bytes, so they must match");
    dst_slots_ = hello.slots;
    writer_ = std::thread([this] { write_loop(); });
    reader_ = std::thread([this] { read_loop(); });
  }
  tcp_transport(tcp_transport const&) = delete;
  tcp_transport& operator=(tcp_transport const&) = delete;

  // Sends what is queued, waits for the acks of what was sent, then closes the connection.
  ~tcp_transport() {
    {
      std::unique_lock lock(mutex_);
      stopping_ = true;
      cv_.notify_all();
      idle_.wait(lock,
                 [&] { return (queue_.empty() && pending_.empty() && !writing_) || broken_; });
    }
    ::shutdown(sock_.fd, SHUT_RDWR);
    writer_.join();
    reader_.join();
  }

  kv_layout layout() const noexcept { return layout_; }
  std::int64_t source_slots() const noexcept { return src_[0].size(0); }
  std::int64_t destination_slots() const noexcept { return dst_slots_; }

  void submit(layer_copy job) {
    LC_CHECK(job.done != nullptr, "tcp_transport::submit: the job has no completion callback");
    std::string why;
    {
      std::lock_guard lock(mutex_);
      if (!broken_) {
        queue_.push_back(std::move(job));
        cv_.notify_all();
        return;
      }
      why = broken_reason_;
    }
    job.done("connection to the decode instance is broken: " + why);
  }

 private:
  void write_loop() {
    std::vector<unsigned char> staging;
    std::size_t const row = layout_.row_bytes();
    for (;;) {
      layer_copy job;
      std::uint64_t tag = 0;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return !queue_.empty() || stopping_ || broken_; });
        if (broken_ || queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
        tag = ++next_tag_;
        writing_ = true;
      }
      std::string error;
      std::size_t const n = job.src_slots.size();
      if (job.layer < 0 || job.layer >= layout_.layers || n != job.dst_slots.size()) {
        error = "bad layer copy (layer or slot counts)";
      } else {
        // Gather: the destination ids, then the rows in the same order.
        staging.resize(n * (4 + row));
        std::memcpy(staging.data(), job.dst_slots.data(), n * 4);
        auto const* base = static_cast<unsigned char const*>(src_[std::size_t(job.layer)].data());
        for (std::size_t i = 0; i < n && error.empty(); ++i) {
          std::int32_t const s = job.src_slots[i];
          if (s < 0 || s >= source_slots())
            error = "source slot " + std::to_string(s) + " out of range";
          else
            std::memcpy(staging.data() + n * 4 + i * row, base + std::size_t(s) * row, row);
        }
      }
      if (!error.empty()) {
        job.done(error);
        std::lock_guard lock(mutex_);
        writing_ = false;
        if (queue_.empty() && pending_.empty()) idle_.notify_all();
        continue;
      }
      std::int32_t const layer = job.layer;
      {
        std::lock_guard lock(mutex_);
        pending_.emplace(tag, std::move(job));  // before sending: the ack may come at once
        writing_ = false;
      }
      if (!detail::send_frame(sock_.fd, tcp_frame_kind::layer, tag, layer, std::uint32_t(n),
                              staging.data(), staging.size())) {
        fail_all("send failed");
        return;
      }
    }
  }

  void read_loop() {
    for (;;) {
      tcp_frame_header h;
      bool closed = false;
      std::string const e = detail::recv_header(sock_.fd, h, closed);
      if (!e.empty()) return fail_all(e);
      std::vector<char> payload(h.payload_bytes);
      if (h.kind != std::uint16_t(tcp_frame_kind::ack) || h.payload_bytes < 4 ||
          !detail::recv_all(sock_.fd, payload.data(), payload.size()))
        return fail_all("bad or truncated ack frame");
      std::uint32_t status = 0;
      std::memcpy(&status, payload.data(), 4);
      std::string const text(payload.begin() + 4, payload.end());
      layer_copy job;
      {
        std::lock_guard lock(mutex_);
        auto it = pending_.find(h.tag);
        if (it == pending_.end()) continue;  // cannot happen with a well-behaved server
        job = std::move(it->second);
        pending_.erase(it);
      }
      job.done(status == 0 ? std::string() : "decode instance refused the layer: " + text);
      std::lock_guard lock(mutex_);
      if (queue_.empty() && pending_.empty() && !writing_) idle_.notify_all();
    }
  }

  void fail_all(std::string const& why) {
    std::vector<layer_copy> jobs;
    {
      std::lock_guard lock(mutex_);
      if (!broken_) broken_reason_ = why;
      broken_ = true;
      for (auto& j : queue_) jobs.push_back(std::move(j));
      queue_.clear();
      for (auto& [tag, j] : pending_) jobs.push_back(std::move(j));
      pending_.clear();
      cv_.notify_all();
      idle_.notify_all();
    }
    for (layer_copy& j : jobs) j.done("connection to the decode instance is broken: " + why);
  }

  std::vector<tensor_view> src_;  // per layer [source slots, width]
  kv_layout layout_;
  std::int64_t dst_slots_ = 0;
  detail::socket_fd sock_;
  std::mutex mutex_;
  std::condition_variable cv_;    // queued work, stopping, broken
  std::condition_variable idle_;  // nothing queued or awaiting an ack
  std::deque<layer_copy> queue_;
  std::map<std::uint64_t, layer_copy> pending_;  // sent, awaiting the ack; by tag
  std::uint64_t next_tag_ = 0;
  bool writing_ = false;  // a job is between the queue and pending_
  bool stopping_ = false;
  bool broken_ = false;
  std::string broken_reason_;
  std::thread writer_;
  std::thread reader_;
};

static_assert(kv_transport<tcp_transport>);

}  // namespace lightcore::pd
