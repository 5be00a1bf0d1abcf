// gemm: choosing cuBLASLt's algorithm by measurement at plan time. The switch, the rule that picks
// among the timed candidates and the plan-cache key live here, free of CUDA, so CPU tests check
// them.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>

#include "kernels/gemm/gemm_params.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels {

// The environment variable that turns the selection on: "1", "on", "true" or "yes" (any case);
// "0", "off", "false", "no", empty or unset keep it off. Read when a gemm_context is made. Off by
// default: a plan is made per new shape (M included), so in a server every new prefill size would
// pay tens of milliseconds of timing and a scratch allocation in the middle of serving; turn it on
// for benchmarks and for engines whose shapes are all planned before they serve.
inline constexpr char const* gemm_autotune_env = "LIGHTCORE_GEMM_AUTOTUNE";

// How a CUDA gemm_context chooses each shape's algorithm. Off, it takes cuBLASLt's first heuristic
// answer (the heuristic ranks by a model, and was measured to leave 5-12% on some DeepSeek shapes:
// docs/perf/gemm-algo-selection.md); on, it times the first max_candidates answers on scratch
// operands of the problem's shape and keeps the fastest. Either way the choice is made once per
// shape and cached, so a hot loop or a CUDA graph capture never measures.
struct gemm_autotune_options {
  bool enabled = false;    // time the candidates; default off (LIGHTCORE_GEMM_AUTOTUNE=1: on)
  int max_candidates = 8;  // heuristic answers asked for and timed, 1..32; default 8
  int warmup_calls = 2;    // untimed calls of each candidate before its timing; default 2
  // Timed calls per candidate and round, each between its own two events after the L2 is
  // cleared (a layer's weights come from HBM); 1..64, default 4.
  int timed_calls = 4;
  int rounds = 2;  // rounds over all candidates; a candidate's time is its median call; 1..8; 2
  // A candidate replaces the first heuristic answer only when faster by this fraction (default
  // 0.02), so that noise between near-equal kernels does not make the choice flip from run to run.
  double min_gain = 0.02;
  // Scratch (A, B, C and scales of the problem's extents, and twice the L2 to clear it) above this
  // many bytes is not allocated and the shape keeps the first heuristic answer; default 2 GiB (the
  // largest R1 weight, the 129280 x 7168 bf16 lm head, is 1.85 GB).
  std::int64_t max_scratch_bytes = std::int64_t(2) << 30;
  // -1 (default): keep the fastest. i >= 0: keep the i-th candidate where there are more than i
  // (still timed), so that a test can run every candidate and a suspect kernel can be bisected.
  int pinned_candidate = -1;
};

// The switch's value in `value` (the environment variable's text; null: unset, which means on).
inline bool parse_gemm_autotune_switch(char const* value) {
  if (value == nullptr) return false;
  std::string_view const v(value);
  auto const is = [&](std::string_view word) {
    if (v.size() != word.size()) return false;
    for (std::size_t i = 0; i < v.size(); ++i) {
      char const c = v[i] >= 'A' && v[i] <= 'Z' ? char(v[i] - 'A' + 'a') : v[i];
      if (c != word[i]) return false;
    }
    return true;
  };
  if (is("1") || is("on") || is("true") || is("yes")) return true;
  if (v.empty() || is("0") || is("off") || is("false") || is("no")) return false;
  LC_THROW(gemm_autotune_env << " is '" << v
                             << "'; allowed: 0, off, false, no (cuBLASLt's first heuristic "
                                "algorithm, the default) or 1, on, true, yes (timed selection)");
}

// The default options with `enabled` from the environment.
inline gemm_autotune_options gemm_autotune_options_from_env() {
  gemm_autotune_options o;
  o.enabled = parse_gemm_autotune_switch(std::getenv(gemm_autotune_env));
  return o;
}

// Throws, naming the field and its allowed range, unless every field is usable.
inline void check_gemm_autotune_options(gemm_autotune_options const& o) {
  LC_CHECK(o.max_candidates >= 1 && o.max_candidates <= 32,
           "gemm_autotune_options::max_candidates is " << o.max_candidates << "; allowed 1..32");
  LC_CHECK(o.warmup_calls >= 0 && o.warmup_calls <= 64,
           "gemm_autotune_options::warmup_calls is " << o.warmup_calls << "; allowed 0..64");
  LC_CHECK(o.timed_calls >= 1 && o.timed_calls <= 64,
           "gemm_autotune_options::timed_calls is " << o.timed_calls << "; allowed 1..64");
  LC_CHECK(o.rounds >= 1 && o.rounds <= 8,
           "gemm_autotune_options::rounds is " << o.rounds << "; allowed 1..8");
  LC_CHECK(o.min_gain >= 0.0 && o.min_gain < 1.0,
           "gemm_autotune_options::min_gain is " << o.min_gain << "; allowed [0, 1)");
  LC_CHECK(o.pinned_candidate >= -1 && o.pinned_candidate < o.max_candidates,
           "gemm_autotune_options::pinned_candidate is "
               << o.pinned_candidate << "; allowed -1 (none) .. max_candidates - 1 ("
               << o.max_candidates - 1 << ")");
  LC_CHECK(o.max_scratch_bytes >= 0, "gemm_autotune_options::max_scratch_bytes is "
                                         << o.max_scratch_bytes << "; allowed >= 0");
}

// The candidate to keep, from each candidate's measured time (seconds; NaN, infinite or negative:
// it failed to run) in the heuristic's order. The fastest wins, ties to the lower index; the first
// heuristic answer (index 0) stays unless the winner is faster by min_gain. No usable time: 0.
inline int gemm_autotune_choice(std::span<double const> seconds, double min_gain) {
  auto const usable = [](double t) { return std::isfinite(t) && t >= 0.0; };
  int best = -1;
  for (std::size_t i = 0; i < seconds.size(); ++i)
    if (usable(seconds[i]) && (best < 0 || seconds[i] < seconds[std::size_t(best)])) best = int(i);
  if (best <= 0) return 0;
  if (usable(seconds[0]) && seconds[std::size_t(best)] > seconds[0] * (1.0 - min_gain)) return 0;
  return best;
}

namespace detail {

// The largest power of two (up to 256 bytes) that divides the address and every row and batch
// offset of an operand: what cuBLASLt may assume of every pointer it forms.
inline std::int64_t gemm_alignment_of(void const* p, std::int64_t ld, std::int64_t stride,
                                      dtype t) {
  std::uint64_t const e = size_of(t);
  std::uint64_t const bits = reinterpret_cast<std::uintptr_t>(p) | (std::uint64_t(ld) * e) |
                             (std::uint64_t(stride) * e) | 256u;
  return std::int64_t(bits & (~bits + 1));
}

// The plan cache's key: everything that changes the descriptors or the algorithm's validity and
// speed (extents, strides, types, pointer alignments, the workspace offered), then the route.
// Pointers themselves are not in it, so one plan serves every buffer of a shape; scalars are set
// per call, but beta = 0 is kept apart (C is then not read, a different kernel may win).
using gemm_plan_key = std::array<std::int64_t, 21>;
inline constexpr std::size_t gemm_plan_key_align_a = 14;  // the indexes of the alignments
inline constexpr std::size_t gemm_plan_key_align_b = 15;
inline constexpr std::size_t gemm_plan_key_align_c = 16;

// `streaming`: the problem goes to the weight-streaming kernels, not cuBLASLt.
inline gemm_plan_key gemm_plan_key_of(gemm_problem const& p, std::int64_t workspace_bytes,
                                      bool streaming) {
  bool const batched = p.batch > 1;
  return {p.batch,
          p.m,
          p.n,
          p.k,
          std::int64_t(p.a_type),
          std::int64_t(p.b_type),
          std::int64_t(p.c_type),
          std::int64_t(p.layout),
          p.lda,
          p.ldb,
          p.ldc,
          batched ? p.stride_a : 0,
          batched ? p.stride_b : 0,
          batched ? p.stride_c : 0,
          gemm_alignment_of(p.a, p.lda, batched ? p.stride_a : 0, p.a_type),
          gemm_alignment_of(p.b, p.ldb, batched ? p.stride_b : 0, p.b_type),
          gemm_alignment_of(p.c, p.ldc, batched ? p.stride_c : 0, p.c_type),
          p.beta != 0.0f,
          p.a_scales != nullptr,
          workspace_bytes,
          streaming};
}

// Elements an operand of `rows` x `cols` (row stride ld, `batch` matrices `stride` apart) spans
// from its first element: what a scratch copy of it must hold.
inline std::int64_t gemm_operand_span(std::int64_t batch, std::int64_t rows, std::int64_t cols,
                                      std::int64_t ld, std::int64_t stride) {
  if (batch <= 0 || rows <= 0 || cols <= 0) return 0;
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

}  // namespace detail
}  // namespace lightcore::kernels
