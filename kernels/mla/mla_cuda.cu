// mla: the CUDA dispatch, where the runtime page size and head count become the template
// arguments of the launchers instantiated under instantiations/ (page size 1; head tiles of 16
// and 64), and where the merge follows a split decode.
#include "kernels/mla/mla.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {

int mla_multiprocessor_count(int ordinal) { return backend::multiprocessor_count(ordinal); }

void kv_write_cuda(kv_write_params const& p, int page_size, int ordinal, CUstream_st* stream) {
  LC_CHECK(page_size == 1 || p.slots != nullptr,
           "kv writes through req_to_token on CUDA are built for page size 1; got page size "
               << page_size << " (add an instantiation to kernels/mla/instantiations/)");
  backend::device_guard const guard(ordinal);
  // An explicit slot list does not depend on the page size.
  launch_kv_write<kv_layout<1>>(p, backend::multiprocessor_count(ordinal), stream);
}

void mla_decode_cuda(mla_decode_params const& p, int page_size, int ordinal, CUstream_st* stream) {
  LC_CHECK(page_size == 1, "mla_decode on CUDA is built for page size 1; got "
                               << page_size
                               << " (add an instantiation to kernels/mla/instantiations/)");
  LC_CHECK(p.q_len == 1, "mla_decode on CUDA supports one query token per row; got " << p.q_len);
  // Checked before the decode runs: without out, a plan that does not split has nowhere to write.
  LC_CHECK(p.w_uv == nullptr || (p.num_splits > 1 && p.batch <= mla_fold_w_uv_max_batch &&
                                 p.v_dim % mla_fold_w_uv_cols == 0),
           "mla_decode on CUDA folds W_UV into the merge of a split plan of at most "
               << mla_fold_w_uv_max_batch << " rows, v_dim a multiple of " << mla_fold_w_uv_cols
               << "; got " << p.num_splits << " splits, " << p.batch << " rows, v_dim " << p.v_dim
               << " (see mla_decode_folds_w_uv)");
  backend::device_guard const guard(ordinal);
  switch (mla_heads_per_tile(p.heads)) {
    case mla_head_tile_large: launch_mla_decode_wgmma<kv_layout<1>>(p, stream); break;
    case mla_head_tile_small: launch_mla_decode_stream<kv_layout<1>>(p, stream); break;
    default:
      LC_THROW("mla_decode on CUDA: no head tile for " << p.heads
                                                       << " heads; allowed: multiples of 16");
  }
  if (p.w_uv != nullptr) {
    launch_mla_merge_project<bf16>(p, stream);
  } else if (p.num_splits > 1) {
    launch_mla_merge<bf16>(p, stream);
  }
}

}  // namespace lightcore::kernels::detail
