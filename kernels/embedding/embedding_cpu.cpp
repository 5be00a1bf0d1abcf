// embedding: the CPU reference. It checks every id against the vocabulary first (the CUDA kernel
// cannot), then copies rows or writes zeros.
#include <algorithm>

#include "kernels/embedding/embedding.hpp"

namespace lightcore::kernels::detail {

void embedding_cpu(tensor_view const& ids, tensor_view const& table, tensor_view const& out,
                   vocab_shard shard) {
  auto const* const id = ids.data_as<std::int32_t>();
  std::int64_t const tokens = ids.size(0);
  for (std::int64_t t = 0; t < tokens; ++t)
    LC_CHECK(0 <= id[t] && id[t] < shard.vocab_size,
             "embedding: token " << t << " has id " << id[t] << ", outside the vocabulary [0, "
                                 << shard.vocab_size << ")");
  embedding_params<bf16> const p{id,
                                 table.data_as<bf16>(),
                                 out.data_as<bf16>(),
                                 tokens,
                                 table.size(1),
                                 table.stride(0),
                                 out.stride(0),
                                 shard.vocab_start,
                                 table.size(0)};
  for (std::int64_t t = 0; t < tokens; ++t) {
    bf16* const dst = p.out + t * p.out_stride;
    std::int64_t const row = embedding_row(p, id[t]);
    if (row < 0) {
      std::fill_n(dst, p.hidden, bf16(0.0f));
    } else {
      std::copy_n(p.table + row * p.table_stride, p.hidden, dst);
    }
  }
}

}  // namespace lightcore::kernels::detail
