// embedding: the vocabulary-sharded token embedding of DeepSeek's first layer. Under tensor
// parallelism each rank holds vocabulary rows [vocab_start, vocab_start + V_shard) of the
// [vocab_size, hidden] table; it writes the rows of the ids it holds and zeros for the rest, and
// the ranks' outputs are summed (all-reduce) into the full embedding.
#pragma once

#include <cstdint>
#include <utility>

#include "kernels/embedding/embedding_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// Which vocabulary rows this rank's table holds.
struct vocab_shard {
  std::int64_t vocab_start = 0;  // the first id in the table; 0 without tensor parallelism
  std::int64_t vocab_size = 0;   // ids of the whole vocabulary, every rank (129280 for V3/R1)
};

// Elements per 16-byte access: hidden and the row strides must be multiples of it.
inline constexpr std::int64_t embedding_vector_elems = 8;

namespace detail {

void embedding_cpu(tensor_view const& ids, tensor_view const& table, tensor_view const& out,
                   vocab_shard shard);
#if defined(LIGHTCORE_WITH_CUDA)
void embedding_cuda(tensor_view const& ids, tensor_view const& table, tensor_view const& out,
                    vocab_shard shard, CUstream_st* stream);

// Defined in embedding.cuh, instantiated once per dtype in instantiations/.
template <class T>
void launch_embedding(embedding_params<T> const& p, int num_sms, CUstream_st* stream);
#endif

inline std::pair<std::uintptr_t, std::uintptr_t> embedding_byte_span(tensor_view const& v) {
  auto const first = reinterpret_cast<std::uintptr_t>(v.data());
  std::int64_t elems = 1;
  for (int d = 0; d < v.rank(); ++d) elems += (v.size(d) - 1) * v.stride(d);
  return {first, first + std::uintptr_t(elems) * v.element_size()};
}

inline bool embedding_disjoint(tensor_view const& a, tensor_view const& b) {
  auto const [a0, a1] = embedding_byte_span(a);
  auto const [b0, b1] = embedding_byte_span(b);
  return a1 <= b0 || b1 <= a0;
}

inline void check_embedding_args(device where, tensor_view const& ids, tensor_view const& table,
                                 tensor_view const& out, vocab_shard shard) {
  LC_CHECK(ids.type() == dtype::i32 && table.type() == dtype::bf16 && out.type() == dtype::bf16,
           "embedding supports ids i32 with a bf16 table and output; got ids "
               << ids.type() << ", table " << table.type() << ", output " << out.type());
  LC_CHECK(ids.rank() == 1 && table.rank() == 2 && out.rank() == 2 && out.size(0) == ids.size(0) &&
               out.size(1) == table.size(1),
           "embedding needs ids [T], table [V_shard, H] and output [T, H]; got ids "
               << ids.shape() << ", table " << table.shape() << ", output " << out.shape());
  std::int64_t const tokens = ids.size(0), hidden = table.size(1), rows = table.size(0);
  LC_CHECK(hidden % embedding_vector_elems == 0, "embedding needs H to be a multiple of "
                                                     << embedding_vector_elems
                                                     << "; got H = " << hidden);
  LC_CHECK(shard.vocab_size > 0 && shard.vocab_start >= 0 &&
               shard.vocab_start + rows <= shard.vocab_size,
           "embedding's table holds ids [" << shard.vocab_start << ", " << shard.vocab_start + rows
                                           << ") which must lie in the vocabulary [0, "
                                           << shard.vocab_size << ")");
  LC_CHECK(ids.where() == where && table.where() == where && out.where() == where,
           "embedding on " << where << " needs every view there; ids are on " << ids.where()
                           << ", table on " << table.where() << ", output on " << out.where());
  if (tokens == 0 || hidden == 0) return;
  LC_CHECK(ids.stride(0) == 1 || tokens == 1, "embedding needs contiguous ids; got " << ids);
  LC_CHECK(
      table.stride(1) == 1 && out.stride(1) == 1 &&
          (rows <= 1 ||
           (table.stride(0) % embedding_vector_elems == 0 && table.stride(0) >= hidden)) &&
          (tokens == 1 || (out.stride(0) % embedding_vector_elems == 0 && out.stride(0) >= hidden)),
      "embedding needs table and output with unit column stride and non-overlapping rows "
      "whose strides are multiples of "
          << embedding_vector_elems << " elements; got table " << table << ", output " << out);
  LC_CHECK(ids.data() != nullptr && out.data() != nullptr && (rows == 0 || table.data() != nullptr),
           "embedding got a null pointer (ids " << ids.data() << ", table " << table.data()
                                                << ", output " << out.data() << ")");
  LC_CHECK(reinterpret_cast<std::uintptr_t>(table.data()) % 16 == 0 &&
               reinterpret_cast<std::uintptr_t>(out.data()) % 16 == 0,
           "embedding needs 16-byte aligned table and output; got table at "
               << table.data() << ", output at " << out.data());
  LC_CHECK(embedding_disjoint(out, ids) && (rows == 0 || embedding_disjoint(out, table)),
           "embedding needs an output disjoint from ids and table; got output at "
               << out.data() << ", ids at " << ids.data() << ", table at " << table.data());
}

}  // namespace detail

// out[t] = table[ids[t] - shard.vocab_start] where that row is in the table, else zeros.
// ids: [T] i32 contiguous; table: [V_shard, H] bf16; out: [T, H] bf16; H a multiple of 8, rows
// 16-byte aligned; all on the backend's device. Every id must lie in [0, shard.vocab_size): the
// CPU backend checks it (lightcore::error naming the id); the CUDA kernel cannot throw and writes
// zeros for such ids. Ordered on `stream`.
template <Backend B>
void embedding(B& backend, tensor_view const& ids, tensor_view const& table, tensor_view const& out,
               vocab_shard shard, [[maybe_unused]] typename B::stream_type const& stream) {
  detail::check_embedding_args(backend.where(), ids, table, out, shard);
  if (out.numel() == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::embedding_cpu(ids, table, out, shard);
  } else {
    static_assert(B::kind == device_kind::cuda, "embedding: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::embedding_cuda(ids, table, out, shard, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "embedding on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
