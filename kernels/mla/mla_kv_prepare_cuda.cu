// mla_kv_prepare: the CUDA dispatch, where the page size becomes the launcher's layout.
#include "kernels/mla/mla_kv_prepare.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {

void mla_kv_prepare_cuda(mla_kv_prepare_params const& p, int page_size, int ordinal,
                         CUstream_st* stream) {
  LC_CHECK(page_size == 1 || p.write.slots != nullptr,
           "mla_kv_prepare through req_to_token on CUDA is built for page size 1; got page size "
               << page_size << " (add an instantiation to kernels/mla/instantiations/)");
  backend::device_guard const guard(ordinal);
  launch_mla_kv_prepare<kv_layout<1>>(p, backend::multiprocessor_count(ordinal), stream);
}

}  // namespace lightcore::kernels::detail
