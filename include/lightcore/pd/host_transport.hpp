// host_transport: a kv_transport between two KV pools in host memory of one process (the CPU
// backend), so that CI runs the whole prefill/decode protocol. A worker thread copies the rows:
// submit() only queues, as a device transport only enqueues, so the prefill loop never waits.
//
//   pd::host_transport link(prefill_pool, decode_pool);
//   link.submit({.layer = 3, .src_slots = src, .dst_slots = dst, .done = on_done});
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/memory/kv_pool.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

class host_transport {
 public:
  // Links every layer tensor of `src` ([slots, width] each) to the same layer of `dst`. Both
  // lists must agree on layer count, width and element type; the slot counts may differ.
  host_transport(std::vector<tensor_view> src, std::vector<tensor_view> dst)
      : src_(std::move(src)), dst_(std::move(dst)) {
    LC_CHECK(!src_.empty(), "host_transport needs at least one layer");
    LC_CHECK(src_.size() == dst_.size(), "host_transport: the prefill pool has "
                                             << src_.size() << " layers, the decode pool "
                                             << dst_.size() << "; they must be equal");
    check_side(src_, "prefill");
    check_side(dst_, "decode");
    layout_ = {std::int32_t(src_.size()), src_[0].size(1), src_[0].type()};
    kv_layout const other{std::int32_t(dst_.size()), dst_[0].size(1), dst_[0].type()};
    LC_CHECK(layout_ == other, "host_transport: the prefill pool is "
                                   << layout_ << ", the decode pool " << other
                                   << "; rows are copied as "
                                      "bytes, so they must "
                                      "match");
    worker_ = std::thread([this] { run(); });
  }

  host_transport(memory::kv_pool<backend::cpu> const& src, memory::kv_pool<backend::cpu> const& dst)
      : host_transport(src.layers(), dst.layers()) {}

  host_transport(host_transport const&) = delete;
  host_transport& operator=(host_transport const&) = delete;

  // Finishes the queued copies, then stops the worker.
  ~host_transport() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      paused_ = false;
    }
    cv_.notify_all();
    worker_.join();
  }

  kv_layout layout() const noexcept { return layout_; }
  std::int64_t source_slots() const noexcept { return src_[0].size(0); }
  std::int64_t destination_slots() const noexcept { return dst_[0].size(0); }

  // Queues one layer's copy. The spans must stay valid until job.done runs.
  void submit(layer_copy job) {
    LC_CHECK(job.done != nullptr, "host_transport::submit: the job has no completion callback");
    {
      std::lock_guard lock(mutex_);
      LC_CHECK(!stopping_, "host_transport::submit after shutdown began");
      queue_.push_back(std::move(job));
    }
    cv_.notify_all();
  }

  // Holds the worker between copies until resume() (maintenance; tests use it to cancel a
  // transfer while its layers are queued).
  void pause() {
    std::lock_guard lock(mutex_);
    paused_ = true;
  }
  void resume() {
    {
      std::lock_guard lock(mutex_);
      paused_ = false;
    }
    cv_.notify_all();
  }

  // Jobs queued and not started.
  std::size_t queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }
  // Blocks until the queue is empty and no copy runs (needs the worker not paused).
  void drain() {
    std::unique_lock lock(mutex_);
    idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
  }

  std::uint64_t rows_copied() const {
    std::lock_guard lock(mutex_);
    return rows_copied_;
  }

 private:
  static void check_side(std::vector<tensor_view> const& layers, char const* name) {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      tensor_view const& t = layers[l];
      LC_CHECK(t.where().kind == device_kind::cpu,
               "host_transport: " << name << " layer " << l << " is not in host memory");
      LC_CHECK(t.rank() == 2 && t.is_contiguous(),
               "host_transport: " << name << " layer " << l << " must be a contiguous [slots, "
                                  << "width] tensor; got shape " << t.shape());
      LC_CHECK(t.size(1) == layers[0].size(1) && t.size(0) == layers[0].size(0) &&
                   t.type() == layers[0].type(),
               "host_transport: " << name << " layer " << l << " differs in shape or type from "
                                  << "layer 0");
    }
  }

  // Copies the rows, one memcpy per run of consecutive slot ids on both sides (a fresh pool
  // hands out ascending ids, so a prompt's rows are mostly one run). Returns the error, if any.
  std::string copy(layer_copy const& job) const {
    if (job.layer < 0 || job.layer >= layout_.layers)
      return "layer " + std::to_string(job.layer) + " is out of range";
    if (job.src_slots.size() != job.dst_slots.size()) return "slot counts differ";
    auto const* src = static_cast<unsigned char const*>(src_[std::size_t(job.layer)].data());
    auto* dst = static_cast<unsigned char*>(dst_[std::size_t(job.layer)].data());
    std::size_t const row = layout_.row_bytes();
    std::size_t const n = job.src_slots.size();
    for (std::size_t i = 0; i < n;) {
      std::int32_t const s = job.src_slots[i], d = job.dst_slots[i];
      if (s < 0 || s >= source_slots() || d < 0 || d >= destination_slots())
        return "slot pair (" + std::to_string(s) + ", " + std::to_string(d) + ") is out of range";
      std::size_t run = 1;
      while (i + run < n && job.src_slots[i + run] == s + std::int32_t(run) &&
             job.dst_slots[i + run] == d + std::int32_t(run) &&
             s + std::int64_t(run) < source_slots() && d + std::int64_t(run) < destination_slots())
        ++run;
      std::memcpy(dst + std::size_t(d) * row, src + std::size_t(s) * row, run * row);
      i += run;
    }
    return {};
  }

  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      cv_.wait(lock,
               [&] { return (!paused_ && !queue_.empty()) || (stopping_ && queue_.empty()); });
      if (queue_.empty()) return;  // stopping, nothing left
      layer_copy job = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      std::string error;
      try {
        error = copy(job);
      } catch (std::exception const& e) {
        error = e.what();
      }
      // Counted before done(): whoever learns of the landing sees the rows counted.
      lock.lock();
      if (error.empty()) rows_copied_ += job.src_slots.size();
      lock.unlock();
      job.done(error);
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_cv_.notify_all();
    }
  }

  std::vector<tensor_view> src_;  // per layer [source slots, width]
  std::vector<tensor_view> dst_;  // per layer [destination slots, width]
  kv_layout layout_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;       // work queued, resumed, or stopping
  std::condition_variable idle_cv_;  // queue drained
  std::deque<layer_copy> queue_;
  bool paused_ = false;
  bool busy_ = false;
  bool stopping_ = false;
  std::uint64_t rows_copied_ = 0;
  std::thread worker_;
};

static_assert(kv_transport<host_transport>);

}  // namespace lightcore::pd
