// sampling: the per-request parameters (one sampling_request per row, as the server stores them)
// and the params struct that the CPU reference and the CUDA kernel share.
#pragma once

#include <cstdint>

#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// Top-n alternatives per row: the width of the top_ids / top_logprobs outputs.
inline constexpr int sampling_max_logprobs = 20;

// How one request samples its next token. Plain data, 40 bytes, an array of them per batch (on
// the device for the CUDA backend). Defaults: plain sampling at temperature 1, no logprobs.
// Allowed ranges (checked by the CPU backend; on the device nobody can check them cheaply, so the
// server's request validation owns them, and an out-of-range value there gives an unspecified
// token but never an out-of-bounds access):
struct sampling_request {
  float temperature = 1.0f;         // >= 0, finite; 0 = greedy (argmax)
  std::int32_t top_k = 0;           // >= 0; 0 = off (values >= vocab are off too)
  float top_p = 1.0f;               // (0, 1]; 1 = off
  float min_p = 0.0f;               // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // > 0, finite; 1 = off
  float presence_penalty = 0.0f;    // finite; 0 = off
  float frequency_penalty = 0.0f;   // finite; 0 = off
  std::int32_t num_logprobs = -1;   // [-1, sampling_max_logprobs]; -1 = no logprobs at all
  std::uint64_t seed = 0;           // Philox key: same seed + position + logits = same token
};

// How the CUDA path treats a row: the exact path (logprob rows, which need the raw top-n;
// temperature-only rows, whose race needs every token; a temperature that is not a positive
// number), its greedy argmax, or the streamed candidates with their filters.
inline constexpr int sampling_row_exact = 0;
inline constexpr int sampling_row_greedy = 1;
inline constexpr int sampling_row_filtered = 2;

LC_HOST_DEVICE inline int sampling_row_kind(sampling_request const& r, std::int64_t vocab) {
  if (r.num_logprobs >= 0) return sampling_row_exact;
  if (r.temperature == 0.0f) return sampling_row_greedy;
  bool const filtered = (r.top_k > 0 && r.top_k < vocab) || r.top_p < 1.0f || r.min_p > 0.0f;
  return r.temperature > 0.0f && filtered ? sampling_row_filtered : sampling_row_exact;
}
static_assert(sizeof(sampling_request) == 40, "sampling_request is a fixed 40-byte record");

// One sampling step over a batch. Shapes in elements; strides in elements.
struct sampling_params {
  float const* logits = nullptr;                  // [batch, vocab], row stride logits_stride; read
  sampling_request const* requests = nullptr;     // [batch]
  std::int32_t const* positions = nullptr;        // [batch]: tokens generated so far (RNG counter)
  std::int32_t const* history_ids = nullptr;      // [history_total]: generated ids, row by row
  std::int32_t const* history_offsets = nullptr;  // [batch + 1]: row b's ids at [off[b], off[b+1])
  std::int32_t* tokens = nullptr;                 // [batch]
  float* logprobs = nullptr;                      // [batch]: the chosen token's raw logprob
  std::int32_t* top_ids = nullptr;                // [batch, sampling_max_logprobs], contiguous
  float* top_logprobs = nullptr;                  // [batch, sampling_max_logprobs], contiguous
  std::int64_t batch = 0;
  std::int64_t vocab = 0;
  std::int64_t logits_stride = 0;      // elements between rows of logits (>= vocab)
  std::int64_t history_total = 0;      // elements of history_ids
  unsigned char* workspace = nullptr;  // CUDA: sampling_workspace_bytes(batch, vocab), 16-aligned
  bool exact_only = false;  // CUDA: every row takes the exact path (sampling_route::exact)
};

}  // namespace lightcore::kernels
