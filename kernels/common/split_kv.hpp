// Split-KV (flash-decoding) decode kernels keep each split's partial result in a caller's
// workspace: [rows, width] f32 partial outputs, then, at the next 256-byte boundary, [rows] f32
// partial log-sum-exps (rows = batch x splits x query heads). MLA and GQA decode share the
// layout, its size and its checks.
#pragma once

#include <cstdint>

#include "lightcore/core/device.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

namespace lightcore::kernels::detail {

// The bytes of the partial results: 0 without a split.
inline std::int64_t split_kv_workspace_bytes(std::int64_t rows, std::int64_t width, int splits) {
  if (splits <= 1) return 0;
  return (rows * width * 4 + 255) / 256 * 256 + rows * 4;
}

struct split_kv_partials {
  float* out = nullptr;  // [rows, width]
  float* lse = nullptr;  // [rows]
};

// The partials in `workspace` (u8, 1-D, at least `bytes`, 256-byte aligned, on `where`); throws,
// naming `op`, for anything else.
inline split_kv_partials carve_split_kv_workspace(tensor_view const& workspace, device where,
                                                  std::int64_t bytes, std::int64_t rows,
                                                  std::int64_t width, char const* op) {
  LC_CHECK(workspace.type() == dtype::u8 && workspace.rank() == 1 && workspace.size(0) >= bytes &&
               workspace.data() != nullptr &&
               reinterpret_cast<std::uintptr_t>(workspace.data()) % 256 == 0 &&
               workspace.where() == where,
           op << " needs a u8 workspace of at least " << bytes << " bytes on " << where
              << ", 256-byte aligned; got " << workspace << " on " << workspace.where() << " at "
              << workspace.data());
  auto* const base = static_cast<unsigned char*>(workspace.data());
  return {reinterpret_cast<float*>(base),
          reinterpret_cast<float*>(base + (rows * width * 4 + 255) / 256 * 256)};
}

}  // namespace lightcore::kernels::detail
