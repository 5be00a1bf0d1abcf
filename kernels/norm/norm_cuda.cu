// norm: the CUDA dispatch, the one place where the hidden size becomes launch geometry and a
// compile-time vectors-per-thread bucket; each bucket's launcher lives in its own file under
// instantiations/.
#include <algorithm>
#include <cstdint>

#include "kernels/norm/norm.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {
namespace {

constexpr int warp = 32;
// Rows of at most this many vectors go one warp per row, several rows per block.
constexpr int warp_row_max_vectors = 2 * warp;
constexpr int warp_rows_per_block = 4;
// Wider fused rows take one block each, of at most this many threads before a thread takes more
// vectors: about 8 blocks resident per SM keep 32-64 KiB of loads in flight there.
constexpr int preferred_threads_per_row = 128;
constexpr int max_threads_per_row = 512;
// Wider plain rows: 4 vectors per thread, and as many rows per block as fit in this many threads.
// At H 2048 (64 threads x 4 rows) that measured 0.82 of the HBM copy at M 4096, against 0.80 for
// 128 threads x 2 vectors x 1 row and 0.81 for one warp x 8 vectors x 8 rows (all overlapped).
constexpr int plain_vectors_per_thread = 4;
constexpr int plain_block_threads = 256;

struct rmsnorm_plan {
  int vectors_per_thread = 0;  // 1, 2 or 4: the instantiated buckets
  rmsnorm_launch geometry;
};

int round_up_to_warps(int threads) { return (threads + warp - 1) / warp * warp; }

// Both: H 512 -> 1 warp x 2 vectors (4 rows per block). Plain: 1536 and 2048 -> 64 threads x 4
// (4 rows per block), 7168 -> 224 x 4. Fused: 1536 -> 96 x 2, 2048 -> 128 x 2, 7168 -> 224 x 4.
rmsnorm_plan plan_rmsnorm(std::int64_t hidden, bool fused) {
  int const vectors = int(hidden / norm_vector_elems);
  if (vectors <= warp_row_max_vectors)
    return {vectors <= warp ? 1 : 2, {warp, warp_rows_per_block}};
  if (!fused) {
    int const threads =
        round_up_to_warps((vectors + plain_vectors_per_thread - 1) / plain_vectors_per_thread);
    LC_CHECK(threads <= max_threads_per_row, "rmsnorm on CUDA supports hidden sizes up to "
                                                 << norm_max_hidden << "; got H = " << hidden);
    return {plain_vectors_per_thread, {threads, std::max(1, plain_block_threads / threads)}};
  }
  int vpt = 1;
  while (vpt < 4 && (vectors + vpt - 1) / vpt > preferred_threads_per_row) vpt *= 2;
  int const threads = round_up_to_warps((vectors + vpt - 1) / vpt);
  LC_CHECK(threads <= max_threads_per_row, "rmsnorm on CUDA supports hidden sizes up to "
                                               << norm_max_hidden << "; got H = " << hidden);
  return {vpt, {threads, 1}};
}

template <bool Fused>
void launch_bucket(rmsnorm_plan const& plan, rmsnorm_params<bf16> const& p, CUstream_st* stream) {
  switch (plan.vectors_per_thread) {
    case 1: return launch_rmsnorm<1, Fused>(p, plan.geometry, stream);
    case 2: return launch_rmsnorm<2, Fused>(p, plan.geometry, stream);
    case 4: return launch_rmsnorm<4, Fused>(p, plan.geometry, stream);
    default:
      LC_THROW("rmsnorm has no kernel for " << plan.vectors_per_thread
                                            << " vectors per thread; instantiated: 1, 2, 4");
  }
}

}  // namespace

void rmsnorm_cuda(rmsnorm_params<bf16> const& p, int ordinal, CUstream_st* stream) {
  backend::device_guard const guard(ordinal);
  bool const fused = p.residual != nullptr;
  rmsnorm_plan const plan = plan_rmsnorm(p.hidden, fused);
  if (fused) {
    launch_bucket<true>(plan, p, stream);
  } else {
    launch_bucket<false>(plan, p, stream);
  }
}

}  // namespace lightcore::kernels::detail
