// mla: the KV write into a token pool of page size 1 (one explicit instantiation per file; see
// kv_write.cuh).
#include "kernels/mla/kv_write.cuh"

namespace lightcore::kernels::detail {
template void launch_kv_write<kv_layout<1>>(kv_write_params const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
