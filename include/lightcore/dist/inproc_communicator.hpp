// inproc_communicator: a Communicator for backend::cpu whose ranks are threads of one process
// sharing an inproc_group. It lets CI test tensor- and expert-parallel logic (sharded weights,
// all-reduce after a row-parallel layer, all-to-all dispatch) without GPUs.
//
// Sums are deterministic: every rank adds the ranks' values in rank order, in fp32 (bf16 inputs
// are widened and the sum rounded once), so every rank gets identical bits, run after run.
// run_ranks(world, f) runs f on `world` ranks (threads) and rethrows the first failure.
#pragma once

#include <cstddef>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/dist/communicator.hpp"
#include "lightcore/dist/inproc_group.hpp"

namespace lightcore::dist {

class inproc_communicator {
 public:
  using backend_type = backend::cpu;
  using stream_type = backend::cpu::stream_type;

  // Rank `rank` of `group`; each rank's thread owns its own communicator.
  inproc_communicator(inproc_group& group, int rank) : group_(&group), rank_(rank) {
    LC_CHECK(0 <= rank && rank < group.world_size(), "inproc_communicator: rank "
                                                         << rank << " is out of range; allowed 0.."
                                                         << group.world_size() - 1);
  }

  int rank() const noexcept { return rank_; }
  int world_size() const noexcept { return group_->world_size(); }

  void all_reduce_sum(tensor_view const& x, stream_type const& /*s*/) {
    local_checks([&] {
      detail::check_buffer("all_reduce_sum", "x", x, device::cpu());
      detail::check_reducible("all_reduce_sum", x);
    });
    inproc_call call;
    call.op = collective::all_reduce_sum;
    call.in = x;
    run(
        call,
        [&](std::span<inproc_call const> calls) {
          staging_.resize(x.nbytes());
          sum_rows(calls, 0, x.numel(), staging_.data());
        },
        [&] { copy(x.data(), staging_.data(), x.nbytes()); });
  }

  void all_gather(tensor_view const& in, tensor_view const& out, stream_type const& /*s*/) {
    local_checks([&] {
      detail::check_buffer("all_gather", "input", in, device::cpu());
      detail::check_buffer("all_gather", "output", out, device::cpu());
      detail::check_gather(in, out, world_size());
    });
    inproc_call call;
    call.op = collective::all_gather;
    call.in = in;
    call.out = out;
    run(
        call,
        [&](std::span<inproc_call const> calls) {
          std::size_t const part = in.nbytes();
          staging_.resize(part * calls.size());
          for (std::size_t r = 0; r < calls.size(); ++r)
            copy(staging_.data() + r * part, calls[r].in.data(), part);
        },
        [&] { copy(out.data(), staging_.data(), out.nbytes()); });
  }

  void reduce_scatter_sum(tensor_view const& in, tensor_view const& out, stream_type const& /*s*/) {
    local_checks([&] {
      detail::check_buffer("reduce_scatter_sum", "input", in, device::cpu());
      detail::check_buffer("reduce_scatter_sum", "output", out, device::cpu());
      detail::check_scatter(in, out, world_size());
    });
    inproc_call call;
    call.op = collective::reduce_scatter_sum;
    call.in = in;
    call.out = out;
    run(
        call,
        [&](std::span<inproc_call const> calls) {
          staging_.resize(out.nbytes());
          sum_rows(calls, std::int64_t(rank_) * out.numel(), out.numel(), staging_.data());
        },
        [&] { copy(out.data(), staging_.data(), out.nbytes()); });
  }

  void all_to_all_v(tensor_view const& in, std::span<std::int64_t const> send_counts,
                    tensor_view const& out, std::span<std::int64_t const> recv_counts,
                    stream_type const& /*s*/) {
    local_checks([&] {
      detail::check_buffer("all_to_all_v", "input", in, device::cpu());
      detail::check_buffer("all_to_all_v", "output", out, device::cpu());
      detail::check_all_to_all(in, send_counts, out, recv_counts, world_size());
    });
    inproc_call call;
    call.op = collective::all_to_all_v;
    call.in = in;
    call.out = out;
    call.send_counts = send_counts;
    call.recv_counts = recv_counts;
    std::size_t const row_bytes = std::size_t(detail::row_elements(in)) * in.element_size();
    std::size_t received = 0;
    run(
        call,
        [&](std::span<inproc_call const> calls) {
          for (std::int64_t n : recv_counts) received += std::size_t(n) * row_bytes;
          staging_.resize(received);
          std::byte* dst = staging_.data();
          for (std::size_t src = 0; src < calls.size(); ++src) {
            // Rows for this rank start after what `src` sends to lower ranks.
            std::int64_t offset = 0;
            for (int d = 0; d < rank_; ++d) offset += calls[src].send_counts[std::size_t(d)];
            std::size_t const bytes = std::size_t(recv_counts[src]) * row_bytes;
            copy(dst, static_cast<std::byte const*>(calls[src].in.data()) + offset * row_bytes,
                 bytes);
            dst += bytes;
          }
        },
        [&] { copy(out.data(), staging_.data(), received); });
  }

  void broadcast(tensor_view const& x, int root, stream_type const& /*s*/) {
    local_checks([&] {
      detail::check_buffer("broadcast", "x", x, device::cpu());
      detail::check_root(root, world_size());
    });
    inproc_call call;
    call.op = collective::broadcast;
    call.in = x;
    call.root = root;
    run(
        call,
        [&](std::span<inproc_call const> calls) {
          staging_.resize(x.nbytes());
          copy(staging_.data(), calls[std::size_t(root)].in.data(), x.nbytes());
        },
        [&] {
          if (rank_ != root) copy(x.data(), staging_.data(), x.nbytes());
        });
  }

  void barrier(stream_type const& /*s*/) {
    inproc_call call;
    call.op = collective::barrier;
    run(
        call, [](std::span<inproc_call const>) {}, [] {});
  }

 private:
  // Argument checks that fail on this rank alone still stop the group, so that the others,
  // which may already wait for this rank, fail too instead of hanging.
  template <class Checks>
  void local_checks(Checks&& checks) {
    try {
      checks();
    } catch (error const& e) {
      group_->poison(rank_, e.message());
      throw;
    }
  }

  // Post the call, read the others' buffers into staging, wait until every rank has read, then
  // write this rank's output.
  template <class Read, class Write>
  void run(inproc_call const& call, Read&& read, Write&& write) {
    group_->post(rank_, call);
    try {
      read(group_->calls());
    } catch (std::exception const& e) {
      group_->poison(rank_, e.what());
      throw;
    }
    group_->done_reading(rank_, call.op);
    write();
  }

  // staging[i] = sum over ranks r in rank order of calls[r].in[first + i], i < count, in fp32.
  static void sum_rows(std::span<inproc_call const> calls, std::int64_t first, std::int64_t count,
                       std::byte* staging) {
    if (calls[0].in.type() == dtype::f32)
      sum_as<float>(calls, first, count, reinterpret_cast<float*>(staging));
    else
      sum_as<bf16>(calls, first, count, reinterpret_cast<bf16*>(staging));
  }

  template <class T>
  static void sum_as(std::span<inproc_call const> calls, std::int64_t first, std::int64_t count,
                     T* out) {
    for (std::int64_t i = 0; i < count; ++i) {
      // Start from rank 0's value rather than 0.0f so that a -0.0 sum stays -0.0.
      float acc = float(static_cast<T const*>(calls[0].in.data())[first + i]);
      for (std::size_t r = 1; r < calls.size(); ++r)
        acc += float(static_cast<T const*>(calls[r].in.data())[first + i]);
      out[i] = T(acc);
    }
  }

  static void copy(void* dst, void const* src, std::size_t bytes) {
    if (bytes != 0) std::memmove(dst, src, bytes);
  }

  inproc_group* group_;
  int rank_;
  std::vector<std::byte> staging_;  // reused across calls: steady state allocates nothing
};

static_assert(Communicator<inproc_communicator>);

namespace detail {
inline std::string describe(std::exception_ptr const& e) {
  try {
    std::rethrow_exception(e);
  } catch (error const& x) {
    return x.message();
  } catch (std::exception const& x) {
    return x.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}
}  // namespace detail

// Runs f(inproc_communicator&) on `world_size` ranks, one thread each, and waits for all. If any
// rank throws, the group is poisoned (the others fail at their next collective instead of
// hanging) and, after every thread has ended, the failing rank's exception is rethrown; when the
// ranks' calls disagreed, which every rank reports, rank order decides.
template <class F>
void run_ranks(int world_size, F&& f, inproc_options options = {}) {
  inproc_group group(world_size, options);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world_size));
  std::vector<std::thread> threads;
  threads.reserve(std::size_t(world_size));
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        inproc_communicator comm(group, r);
        f(comm);
      } catch (...) {
        errors[std::size_t(r)] = std::current_exception();
        group.poison(r, detail::describe(errors[std::size_t(r)]));
      }
      group.leave(r);
    });
  }
  for (auto& t : threads) t.join();
  int const origin = group.poisoned_by();
  if (origin >= 0 && errors[std::size_t(origin)])
    std::rethrow_exception(errors[std::size_t(origin)]);
  for (auto const& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace lightcore::dist
