// embedding: the params that the CPU reference and the CUDA kernel share, and the row lookup both
// apply.
#pragma once

#include <cstdint>

#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// out[t] = table[ids[t] - vocab_start] for ids in this rank's shard, zeros otherwise. Plain data:
// passed by value to the kernel.
template <class T>
struct embedding_params {
  std::int32_t const* ids = nullptr;  // [tokens], contiguous
  T const* table = nullptr;           // [shard_rows, hidden], row stride table_stride
  T* out = nullptr;                   // [tokens, hidden], row stride out_stride
  std::int64_t tokens = 0;
  std::int64_t hidden = 0;        // a multiple of 8 (16-byte rows of bf16)
  std::int64_t table_stride = 0;  // elements between rows of table
  std::int64_t out_stride = 0;    // elements between rows of out
  std::int64_t vocab_start = 0;   // the first vocabulary id that table holds
  std::int64_t shard_rows = 0;    // vocabulary ids [vocab_start, vocab_start + shard_rows) are here
};

// The table row of `id`, or -1 when another rank holds it (or, on CUDA, when the id is outside
// the vocabulary altogether: the kernel writes zeros rather than trap).
template <class T>
LC_HOST_DEVICE inline std::int64_t embedding_row(embedding_params<T> const& p,
                                                 std::int32_t id) noexcept {
  std::int64_t const row = std::int64_t(id) - p.vocab_start;
  return row >= 0 && row < p.shard_rows ? row : -1;
}

}  // namespace lightcore::kernels
