// req_to_token_table: the host side of the req_to_token table through which attention kernels
// find a request's tokens in the KV pool (page size 1: entry [row, pos] is the slot id of
// position pos of the request in that row). It hands out request rows and keeps a host mirror
// of the slot ids; kv_pool copies the entries it writes to the device table.
//
// Not thread-safe: it belongs to the thread that schedules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "lightcore/core/error.hpp"

namespace lightcore::memory {

class req_to_token_table {
 public:
  // rows: requests that may hold a row at once; max_tokens: positions (prompt + output) a
  // request may address.
  req_to_token_table(std::int32_t rows, std::int64_t max_tokens)
      : rows_(rows), max_tokens_(max_tokens) {
    LC_CHECK(rows >= 1, "req_to_token_table needs at least one row; got " << rows);
    LC_CHECK(max_tokens >= 1, "req_to_token_table needs max_tokens >= 1; got " << max_tokens);
    slots_.assign(std::size_t(rows) * std::size_t(max_tokens), 0);
    in_use_.assign(std::size_t(rows), 0);
    free_rows_.reserve(std::size_t(rows));
    for (std::int32_t r = rows - 1; r >= 0; --r) free_rows_.push_back(r);  // row 0 first
  }

  // A free row, or nullopt when every row is held (the scheduler then admits no more requests).
  std::optional<std::int32_t> acquire_row() {
    if (free_rows_.empty()) return std::nullopt;
    std::int32_t const r = free_rows_.back();
    free_rows_.pop_back();
    in_use_[std::size_t(r)] = 1;
    return r;
  }

  void release_row(std::int32_t row) {
    check_row(row, "release_row");
    in_use_[std::size_t(row)] = 0;
    free_rows_.push_back(row);
  }

  // Writes slot ids for positions [pos, pos + slots.size()) of a held row.
  void set(std::int32_t row, std::int64_t pos, std::span<std::int32_t const> slots) {
    check_row(row, "set");
    check_range(pos, std::int64_t(slots.size()));
    std::int32_t* const dst = row_data(row) + pos;
    for (std::size_t i = 0; i < slots.size(); ++i) dst[i] = slots[i];
  }

  // The max_tokens entries of a row; entries past the request's length are stale.
  std::span<std::int32_t const> row(std::int32_t r) const {
    LC_CHECK(r >= 0 && r < rows_,
             "req_to_token row " << r << " is out of range; allowed: 0.." << rows_ - 1);
    return {slots_.data() + std::size_t(r) * std::size_t(max_tokens_), std::size_t(max_tokens_)};
  }

  // Throws unless [pos, pos + count) fits in a row; the message names the limit.
  void check_range(std::int64_t pos, std::int64_t count) const {
    LC_CHECK(pos >= 0 && count >= 0 && pos <= max_tokens_ - count,
             "req_to_token positions [" << pos << ", " << pos + count
                                        << ") do not fit a request row: a request may hold at "
                                           "most max_tokens = "
                                        << max_tokens_ << " tokens (positions 0.."
                                        << max_tokens_ - 1 << ")");
  }

  bool is_held(std::int32_t row) const noexcept {
    return row >= 0 && row < rows_ && in_use_[std::size_t(row)] != 0;
  }
  std::int32_t rows() const noexcept { return rows_; }
  std::int32_t rows_held() const noexcept { return rows_ - std::int32_t(free_rows_.size()); }
  std::int64_t max_tokens() const noexcept { return max_tokens_; }
  // The whole mirror, [rows, max_tokens] row-major.
  std::int32_t const* data() const noexcept { return slots_.data(); }

 private:
  std::int32_t* row_data(std::int32_t r) noexcept {
    return slots_.data() + std::size_t(r) * std::size_t(max_tokens_);
  }
  void check_row(std::int32_t row, char const* what) const {
    LC_CHECK(row >= 0 && row < rows_, "req_to_token_table::" << what << " of row " << row
                                                             << ": out of range; allowed: 0.."
                                                             << rows_ - 1);
    LC_CHECK(in_use_[std::size_t(row)] != 0,
             "req_to_token_table::" << what << " of row " << row
                                    << ": the row is not held (never acquired, or "
                                       "already released)");
  }

  std::int32_t rows_;
  std::int64_t max_tokens_;
  std::vector<std::int32_t> slots_;  // [rows, max_tokens]
  std::vector<std::uint8_t> in_use_;
  std::vector<std::int32_t> free_rows_;  // stack; the back is handed out next
};

}  // namespace lightcore::memory
