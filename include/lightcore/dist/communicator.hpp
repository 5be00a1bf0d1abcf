// The Communicator concept: the collectives that tensor and expert parallelism need (all-reduce
// after a row-parallel layer, all-gather of vocab-sharded logits, all-to-all for expert dispatch),
// ordered on a stream of one backend. Two models: inproc_communicator (backend::cpu, N ranks as N
// threads of one process, for CPU tests of TP/EP logic) and nccl_communicator (backend::cuda, one
// rank per GPU). Layers are templates over a Communicator, so the hot path has no virtual calls.
#pragma once

#include <concepts>
#include <cstdint>
#include <iterator>
#include <span>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

namespace lightcore::dist {

// A Communicator C of world size W, at rank R, provides (every buffer a contiguous view on C's
// device; every rank calls the same collectives in the same order with matching sizes):
//   C::backend_type, C::stream_type (the backend's stream; work is ordered on it)
//   rank(), world_size()
//   all_reduce_sum(x, s)        x [n...] bf16 or f32, in place: the sum over ranks
//   all_gather(in, out, s)      in [m, ...] -> out [W * m, ...]; rank r's rows land at r * m
//   reduce_scatter_sum(in, out, s)  in [W * m, ...] bf16 or f32 -> out [m, ...]: rows
//                               [R * m, (R + 1) * m) of the sum over ranks
//   all_to_all_v(in, send_counts, out, recv_counts, s)
//                               in [>= sum(send_counts), ...]: rows grouped by destination rank,
//                               send_counts[d] rows for rank d, in rank order; out [>=
//                               sum(recv_counts), ...] receives recv_counts[r] rows from rank r,
//                               in rank order. Counts are in rows of dimension 0 and must agree:
//                               send_counts[d] on rank r == recv_counts[r] on rank d. Rows past
//                               the counts are left as they are (fixed maximum sizes for graphs).
//   broadcast(x, root, s)       x [n...] of any dtype, in place: root's contents on every rank
//   barrier(s)                  no rank's later work on s starts before every rank reached it
// all_gather, all_to_all_v and broadcast move bytes and take any dtype.
template <class C>
concept Communicator = Backend<typename C::backend_type> &&
    std::same_as<typename C::stream_type, typename C::backend_type::stream_type> &&
    requires(C& c, C const& cc, tensor_view const& v, std::span<std::int64_t const> counts,
             int root, typename C::stream_type const& s) {
  { cc.rank() } -> std::same_as<int>;
  { cc.world_size() } -> std::same_as<int>;
  c.all_reduce_sum(v, s);
  c.all_gather(v, v, s);
  c.reduce_scatter_sum(v, v, s);
  c.all_to_all_v(v, counts, v, counts, s);
  c.broadcast(v, root, s);
  c.barrier(s);
};

// Argument checks shared by the communicators, so that both refuse the same calls with the same
// words. `op` names the collective in the message.
namespace detail {

inline void check_buffer(char const* op, char const* what, tensor_view const& v, device where) {
  LC_CHECK(v.where() == where, op << ": " << what << " lives on " << v.where()
                                  << " but the communicator's device is " << where);
  LC_CHECK(v.is_contiguous(), op << ": " << what << " must be contiguous; got " << v);
  LC_CHECK(v.numel() == 0 || v.data() != nullptr, op << ": " << what << " has no data: " << v);
}

inline void check_reducible(char const* op, tensor_view const& v) {
  LC_CHECK(v.type() == dtype::bf16 || v.type() == dtype::f32,
           op << ": dtype " << v.type() << " cannot be summed; allowed: bf16, f32");
}

// Elements in one index of dimension 0 (a "row"); views of rank 0 are one row of one element.
inline std::int64_t row_elements(tensor_view const& v) {
  std::int64_t n = 1;
  for (int d = 1; d < v.rank(); ++d) n *= v.size(d);
  return n;
}

// Two views whose dimensions past the first agree (the "rows" of a gather, scatter or all-to-all).
inline void check_rows(char const* op, tensor_view const& in, tensor_view const& out) {
  LC_CHECK(in.rank() >= 1 && out.rank() == in.rank(), op << ": input " << in.shape()
                                                         << " and output " << out.shape()
                                                         << " must have the same rank, at least 1");
  LC_CHECK(in.type() == out.type(),
           op << ": input is " << in.type() << " but output is " << out.type());
  for (int d = 1; d < in.rank(); ++d)
    LC_CHECK(in.size(d) == out.size(d), op << ": input " << in.shape() << " and output "
                                           << out.shape() << " differ in dimension " << d
                                           << "; only dimension 0 may differ");
}

// out [world * m, ...] for in [m, ...].
inline void check_gather(tensor_view const& in, tensor_view const& out, int world) {
  check_rows("all_gather", in, out);
  LC_CHECK(out.size(0) == world * in.size(0),
           "all_gather: output " << out.shape() << " needs " << world << " x " << in.size(0)
                                 << " = " << world * in.size(0) << " rows for input " << in.shape()
                                 << " at world size " << world);
}

// in [world * m, ...] for out [m, ...].
inline void check_scatter(tensor_view const& in, tensor_view const& out, int world) {
  check_rows("reduce_scatter_sum", in, out);
  check_reducible("reduce_scatter_sum", in);
  LC_CHECK(in.size(0) == world * out.size(0),
           "reduce_scatter_sum: input " << in.shape() << " needs " << world << " x " << out.size(0)
                                        << " = " << world * out.size(0) << " rows for output "
                                        << out.shape() << " at world size " << world);
}

inline std::int64_t check_counts(char const* what, std::span<std::int64_t const> counts,
                                 std::int64_t rows, int world) {
  LC_CHECK(std::ssize(counts) == world, "all_to_all_v: " << what << " has " << counts.size()
                                                         << " entries; need one per rank (" << world
                                                         << ")");
  std::int64_t total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    LC_CHECK(counts[r] >= 0,
             "all_to_all_v: " << what << "[" << r << "] = " << counts[r] << " is negative");
    total += counts[r];
  }
  LC_CHECK(total <= rows, "all_to_all_v: " << what << " add up to " << total
                                           << " rows but the buffer has " << rows);
  return total;
}

inline void check_all_to_all(tensor_view const& in, std::span<std::int64_t const> send,
                             tensor_view const& out, std::span<std::int64_t const> recv,
                             int world) {
  check_rows("all_to_all_v", in, out);
  check_counts("send_counts", send, in.size(0), world);
  check_counts("recv_counts", recv, out.size(0), world);
}

inline void check_root(int root, int world) {
  LC_CHECK(0 <= root && root < world,
           "broadcast: root " << root << " is not a rank; allowed 0.." << world - 1);
}

}  // namespace detail

}  // namespace lightcore::dist
