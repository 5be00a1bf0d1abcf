// kv_cache: how one layer's KV pool is laid out and how kernels find a request's tokens in it.
// The pool holds one row per token slot (MLA: the 576-wide latent, 512 compressed kv + 64 roped
// key; GQA: k or v of every kv head). A request's tokens are found through req_to_token[request
// row, column] (LightLLM's TokenAttention). With pages of P slots, column pos / P holds the page of
// position pos and its slot is page * P + pos % P; P = 1 (the default) makes the table hold slot
// ids directly. Slots of a page are consecutive rows, so a slot's row address never depends on P.
// Plain views, usable on the host and in device code.
#pragma once

#include <cstdint>

#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// The compile-time page size of the token pool. Kernels take it as a template argument; the
// instantiations build only what the models use (P = 1).
template <int PageSize = 1>
struct kv_layout {
  static_assert(PageSize >= 1 && (PageSize & (PageSize - 1)) == 0,
                "kv_layout: the page size must be a power of two >= 1");
  static constexpr int page_size = PageSize;

  // The req_to_token column that holds the page of position pos.
  LC_HOST_DEVICE static constexpr std::int64_t table_column(std::int64_t pos) noexcept {
    return pos / PageSize;
  }
  // Columns a request row needs to address max_tokens positions.
  LC_HOST_DEVICE static constexpr std::int64_t table_columns(std::int64_t max_tokens) noexcept {
    return (max_tokens + PageSize - 1) / PageSize;
  }
  // The slot of position pos, given the page id read from its column.
  LC_HOST_DEVICE static constexpr std::int64_t slot(std::int32_t page, std::int64_t pos) noexcept {
    return std::int64_t(page) * PageSize + pos % PageSize;
  }
};

// req_to_token: [request rows, columns] i32 page ids (slot ids when the page size is 1), rows
// row_stride elements apart. Entries past a request's length are never read.
struct req_to_token_view {
  std::int32_t const* data = nullptr;  // [rows, columns]
  std::int64_t rows = 0;
  std::int64_t columns = 0;
  std::int64_t row_stride = 0;  // elements between request rows

  // The slot of position pos of request row `row`.
  template <class Layout>
  LC_HOST_DEVICE std::int64_t slot(std::int64_t row, std::int64_t pos) const noexcept {
    return Layout::slot(data[row * row_stride + Layout::table_column(pos)], pos);
  }
};

// One layer's pool: [slots, width] elements, slot rows row_stride elements apart.
template <class T>
struct kv_pool_view {
  T* data = nullptr;            // [slots, width]
  std::int64_t slots = 0;       // rows in the pool
  std::int64_t width = 0;       // elements used per row (576 for the MLA latent)
  std::int64_t row_stride = 0;  // elements between consecutive slots (>= width)

  LC_HOST_DEVICE T* row(std::int64_t slot) const noexcept { return data + slot * row_stride; }
};

}  // namespace lightcore::kernels
