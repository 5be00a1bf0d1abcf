// attention: the CUDA dispatch, where the runtime head dims and page size become the template
// arguments of the launchers instantiated under instantiations/ (prefill on wgmma: (192, 128),
// (128, 128); prefill on mma.sync: (64, 64); page size 1).
#include "kernels/attention/attention.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {

void prefill_cuda(prefill_params const& p, int ordinal, CUstream_st* stream) {
  backend::device_guard const guard(ordinal);
  // (192, 128) and (128, 128): the wgmma kernel (prefill_wgmma.cuh); (64, 64): the mma.sync one
  // (prefill.cuh).
  if (p.qk_dim == 192 && p.v_dim == 128) {
    launch_prefill_wgmma<192, 128>(p, stream);
  } else if (p.qk_dim == 128 && p.v_dim == 128) {
    launch_prefill_wgmma<128, 128>(p, stream);
  } else if (p.qk_dim == 64 && p.v_dim == 64) {
    launch_prefill<64, 64>(p, stream);
  } else {
    LC_THROW("prefill_attention on CUDA: no kernel for (qk_dim, v_dim) ("
             << p.qk_dim << ", " << p.v_dim << "); built: (192, 128), (128, 128), (64, 64)");
  }
}

void latent_gather_cuda(latent_gather_params const& p, int page_size, int ordinal,
                        CUstream_st* stream) {
  LC_CHECK(page_size == 1, "mla_prefill on CUDA is built for page size 1; got "
                               << page_size
                               << " (add an instantiation to kernels/attention/instantiations/)");
  backend::device_guard const guard(ordinal);
  launch_latent_gather<kv_layout<1>>(p, stream);
}

}  // namespace lightcore::kernels::detail
