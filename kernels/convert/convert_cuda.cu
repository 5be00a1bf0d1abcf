// convert: the CUDA dispatch, from a runtime (src, dst) dtype pair to the pair's launcher, which
// lives in its own file under instantiations/.
#include <cuda_runtime_api.h>

#include <array>
#include <atomic>

#include "kernels/convert/convert.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {
namespace {

// The device's SM count, which sizes the grid; queried once per device, then cached.
int sm_count(int ordinal) {
  static constexpr int max_devices = 64;
  static std::array<std::atomic<int>, max_devices> cache{};  // 0: not queried yet
  LC_CHECK(0 <= ordinal && ordinal < max_devices,
           "CUDA device ordinal " << ordinal << " is out of range; allowed 0.." << max_devices - 1);
  int n = cache[ordinal].load(std::memory_order_relaxed);
  if (n == 0) {
    LC_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, ordinal));
    cache[ordinal].store(n, std::memory_order_relaxed);
  }
  return n;
}

}  // namespace

void convert_cuda(tensor_view const& src, tensor_view const& dst, CUstream_st* stream) {
  int const ordinal = dst.where().index;
  backend::device_guard const guard(ordinal);
  int const num_sms = sm_count(ordinal);
  dispatch_convert_pair(src.type(), dst.type(), [&]<class Src, class Dst>() {
    launch_convert(convert_params<Src, Dst>{src.data_as<Src>(), dst.data_as<Dst>(), src.numel()},
                   num_sms, stream);
  });
}

}  // namespace lightcore::kernels::detail
