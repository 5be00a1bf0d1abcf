// embedding: the CUDA dispatch, from the views to the launcher instantiated under instantiations/
// (bf16 only, DeepSeek's embedding dtype).
#include <cuda_runtime_api.h>

#include "kernels/embedding/embedding.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {
// Ids outside [0, vocab_size) cannot be reported from the kernel without a device-side trap
// (which would poison the context): they fall outside every shard, so their rows are zeros.
void embedding_cuda(tensor_view const& ids, tensor_view const& table, tensor_view const& out,
                    vocab_shard shard, CUstream_st* stream) {
  int const ordinal = out.where().index;
  backend::device_guard const guard(ordinal);
  std::int64_t const tokens = ids.size(0);
  embedding_params<bf16> const p{ids.data_as<std::int32_t>(),
                                 table.data_as<bf16>(),
                                 out.data_as<bf16>(),
                                 tokens,
                                 table.size(1),
                                 table.size(0) <= 1 ? table.size(1) : table.stride(0),
                                 tokens == 1 ? out.size(1) : out.stride(0),
                                 shard.vocab_start,
                                 table.size(0)};
  launch_embedding(p, backend::multiprocessor_count(ordinal), stream);
}

}  // namespace lightcore::kernels::detail
