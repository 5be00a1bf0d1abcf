// What a model's forward runs with besides its weights and the KV pools: the backend, the stream
// its work is ordered on, the GEMM state and the activation manager. The generic executor
// (executor.hpp) builds one per step as {backend, stream, gemm, mem}.
#pragma once

#include <string_view>

#include "kernels/gemm/gemm.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"

namespace lightcore::modules::common {

template <Backend B>
struct forward_context {
  B& backend;
  typename B::stream_type const& stream;
  kernels::gemm_context<B>& gemm;
  memory::cache_tensor_manager<B>& mem;
  using lease = typename memory::cache_tensor_manager<B>::lease;

  lease acquire(std::string_view role, dtype type, dims shape) {
    return mem.acquire(role, type, shape);
  }
  lease gemm_workspace() {
    return mem.acquire("gemm.workspace", dtype::u8, {kernels::gemm_workspace_bytes});
  }
};

}  // namespace lightcore::modules::common
