// index: copy_indexed and copy_rows on CUDA. copy_indexed: one block-stride loop over the entries;
// the arrays are small (a step's rows or new slots), so one wave of a few blocks covers them.
// copy_rows: one warp per row, 16-byte vectors, a grid over the rows.
#include <cuda_runtime_api.h>

#include "kernels/common/pdl.cuh"
#include "kernels/index/index.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {
namespace {

__global__ void copy_indexed_kernel(std::int32_t* __restrict__ dst,
                                    std::int32_t const* __restrict__ dst_index,
                                    std::int32_t const* __restrict__ src,
                                    std::int32_t const* __restrict__ src_index, std::int32_t n,
                                    std::int32_t n_dst, std::int32_t n_src) {
  pdl_enter();
  for (std::int32_t k = std::int32_t(blockIdx.x * blockDim.x + threadIdx.x); k < n;
       k += std::int32_t(gridDim.x * blockDim.x)) {
    std::int32_t const to = dst_index[k];
    std::int32_t const from = src_index == nullptr ? k : src_index[k];
    if (0 <= to && to < n_dst && 0 <= from && from < n_src) dst[to] = src[from];
  }
}

// A warp copies one row (row_bytes / 16 vectors); rows are independent.
constexpr int copy_rows_warps = 8;

__global__ void __launch_bounds__(32 * copy_rows_warps) copy_rows_kernel(copy_rows_params const p) {
  std::int64_t const k = std::int64_t(blockIdx.x) * copy_rows_warps + threadIdx.x / 32;
  if (k >= p.n) return;
  std::int32_t const to = p.dst_slots[k], from = p.src_slots[k];
  if (to < 0 || to >= p.dst_rows || from < 0 || from >= p.src_rows) return;
  auto* dst = reinterpret_cast<uint4*>(static_cast<unsigned char*>(p.dst) + to * p.row_bytes);
  auto const* src =
      reinterpret_cast<uint4 const*>(static_cast<unsigned char const*>(p.src) + from * p.row_bytes);
  std::int64_t const vectors = p.row_bytes / 16;
  for (std::int64_t v = threadIdx.x % 32; v < vectors; v += 32) dst[v] = src[v];
}

}  // namespace

void copy_rows_cuda(copy_rows_params const& p, CUstream_st* stream) {
  check_copy_rows(p);
  if (p.n == 0) return;
  auto const blocks = unsigned((p.n + copy_rows_warps - 1) / copy_rows_warps);
  copy_rows_kernel<<<blocks, 32 * copy_rows_warps, 0, stream>>>(p);
  LC_CUDA_CHECK(cudaGetLastError());
}

void copy_indexed_cuda(tensor_view const& dst, tensor_view const& dst_index, tensor_view const& src,
                       tensor_view const& src_index, CUstream_st* stream) {
  backend::device_guard const guard(dst.where().index);
  auto const n = std::int32_t(dst_index.size(0));
  constexpr int threads = 256;
  constexpr int blocks = 4;  // fixed: capturable, and a step's entries are few
  auto clamp = [](std::int64_t v) { return std::int32_t(std::min<std::int64_t>(v, INT32_MAX)); };
  launch_pdl(copy_indexed_kernel, dim3(blocks), dim3(threads), 0, stream,
             dst.data_as<std::int32_t>(), dst_index.data_as<std::int32_t>(),
             src.data_as<std::int32_t>(),
             src_index.data() == nullptr ? nullptr : src_index.data_as<std::int32_t>(), n,
             clamp(dst.size(0)), clamp(src.size(0)));
  LC_CUDA_CHECK(cudaGetLastError());
}

}  // namespace lightcore::kernels::detail
