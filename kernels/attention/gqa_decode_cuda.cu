// gqa_decode: the CUDA dispatch, where the runtime head dim and page size become the template
// arguments of the launchers instantiated under instantiations/ (head dims 64 and 128, page
// size 1).
#include "kernels/attention/gqa_decode.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {

int gqa_multiprocessor_count(int ordinal) { return backend::multiprocessor_count(ordinal); }

void gqa_decode_cuda(gqa_decode_params const& p, int page_size, int ordinal, CUstream_st* stream) {
  LC_CHECK(page_size == 1, "gqa_decode on CUDA is built for page size 1; got "
                               << page_size
                               << " (add an instantiation to kernels/attention/instantiations/)");
  backend::device_guard const guard(ordinal);
  switch (p.head_dim) {
    case 64: launch_gqa_decode<64, kv_layout<1>>(p, stream); break;
    case 128: launch_gqa_decode<128, kv_layout<1>>(p, stream); break;
    default:
      LC_THROW("gqa_decode on CUDA: head_dim " << p.head_dim << " is not built; allowed: 64, 128");
  }
}

}  // namespace lightcore::kernels::detail
