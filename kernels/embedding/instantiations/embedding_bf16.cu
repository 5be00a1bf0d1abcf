// embedding: bf16 table and output (one explicit instantiation per file; see embedding.cuh).
#include "kernels/embedding/embedding.cuh"

namespace lightcore::kernels::detail {
template void launch_embedding<bf16>(embedding_params<bf16> const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
