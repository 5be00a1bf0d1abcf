// attention: the MLA prefill latent gather, page size 1 (one explicit instantiation per file; see
// latent_gather.cuh).
#include "kernels/attention/latent_gather.cuh"

namespace lightcore::kernels::detail {
template void launch_latent_gather<kv_layout<1>>(latent_gather_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
