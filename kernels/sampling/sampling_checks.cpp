// sampling: the argument checks shared by both backends, and the per-request range checks of the
// CPU backend.
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/sampling/sampling.hpp"

namespace lightcore::kernels::detail {

void check_sampling_request(sampling_request const& r, std::int64_t row) {
  LC_CHECK(std::isfinite(r.temperature) && r.temperature >= 0.0f,
           "sample: request " << row << " has temperature " << r.temperature
                              << "; allowed: finite and >= 0 (0 = greedy)");
  LC_CHECK(r.top_k >= 0,
           "sample: request " << row << " has top_k " << r.top_k << "; allowed: >= 0 (0 = off)");
  LC_CHECK(r.top_p > 0.0f && r.top_p <= 1.0f,
           "sample: request " << row << " has top_p " << r.top_p << "; allowed: (0, 1] (1 = off)");
  LC_CHECK(r.min_p >= 0.0f && r.min_p <= 1.0f,
           "sample: request " << row << " has min_p " << r.min_p << "; allowed: [0, 1] (0 = off)");
  LC_CHECK(std::isfinite(r.repetition_penalty) && r.repetition_penalty > 0.0f,
           "sample: request " << row << " has repetition_penalty " << r.repetition_penalty
                              << "; allowed: finite and > 0 (1 = off)");
  LC_CHECK(std::isfinite(r.presence_penalty) && std::isfinite(r.frequency_penalty),
           "sample: request " << row << " has presence_penalty " << r.presence_penalty
                              << " and frequency_penalty " << r.frequency_penalty
                              << "; allowed: finite (0 = off)");
  LC_CHECK(r.num_logprobs >= -1 && r.num_logprobs <= sampling_max_logprobs,
           "sample: request " << row << " has num_logprobs " << r.num_logprobs
                              << "; allowed: -1 .. " << sampling_max_logprobs << " (-1 = none)");
}

namespace {

bool on(device where, tensor_view const& v) { return v.where() == where; }

void check_vector(tensor_view const& v, char const* name, dtype type, std::int64_t size) {
  LC_CHECK(
      v.type() == type && v.rank() == 1 && v.size(0) == size && (size <= 1 || v.stride(0) == 1),
      "sample needs " << name << " as a contiguous [" << size << "] " << type << " view; got "
                      << v);
}

void check_matrix(tensor_view const& v, char const* name, dtype type, std::int64_t rows,
                  std::int64_t cols) {
  LC_CHECK(v.type() == type && v.rank() == 2 && v.size(0) == rows && v.size(1) == cols &&
               v.is_contiguous(),
           "sample needs " << name << " as a contiguous [" << rows << ", " << cols << "] " << type
                           << " view; got " << v);
}

}  // namespace

sampling_params make_sampling_params(device where, sampling_inputs const& in,
                                     sampling_outputs const& out, tensor_view const& workspace) {
  tensor_view const& l = in.logits;
  LC_CHECK(l.type() == dtype::f32 && l.rank() == 2,
           "sample needs f32 logits of shape [batch, vocab]; got " << l);
  std::int64_t const batch = l.size(0), vocab = l.size(1);
  LC_CHECK(vocab >= 1 && vocab <= INT32_MAX && batch <= sampling_max_batch,
           "sample supports 1 <= vocab <= " << INT32_MAX << " and batch <= " << sampling_max_batch
                                            << "; got logits " << l.shape());
  LC_CHECK(vocab == 1 || l.stride(1) == 1,
           "sample needs logits with unit column stride; got strides " << l.strides());
  LC_CHECK(batch <= 1 || l.stride(0) >= vocab,
           "sample needs non-overlapping logit rows: row stride " << l.stride(0)
                                                                  << " must be >= " << vocab);
  check_matrix(in.requests, "requests", dtype::u8, batch, std::int64_t(sizeof(sampling_request)));
  check_vector(in.positions, "positions", dtype::i32, batch);
  check_vector(in.history_offsets, "history_offsets", dtype::i32, batch + 1);
  LC_CHECK(in.history_ids.type() == dtype::i32 && in.history_ids.rank() == 1 &&
               in.history_ids.size(0) <= INT32_MAX &&
               (in.history_ids.size(0) <= 1 || in.history_ids.stride(0) == 1),
           "sample needs history_ids as a contiguous [total] i32 view (total < 2^31); got "
               << in.history_ids);
  check_vector(out.tokens, "tokens", dtype::i32, batch);
  check_vector(out.logprobs, "logprobs", dtype::f32, batch);
  check_matrix(out.top_ids, "top_ids", dtype::i32, batch, sampling_max_logprobs);
  check_matrix(out.top_logprobs, "top_logprobs", dtype::f32, batch, sampling_max_logprobs);
  LC_CHECK(on(where, l) && on(where, in.requests) && on(where, in.positions) &&
               on(where, in.history_ids) && on(where, in.history_offsets) &&
               on(where, out.tokens) && on(where, out.logprobs) && on(where, out.top_ids) &&
               on(where, out.top_logprobs) && on(where, workspace),
           "sample on " << where << " needs every view there; logits are on " << l.where()
                        << ", requests on " << in.requests.where() << ", positions on "
                        << in.positions.where() << ", history on " << in.history_ids.where()
                        << " / " << in.history_offsets.where() << ", outputs on "
                        << out.tokens.where() << ", workspace on " << workspace.where());
  if (where.kind == device_kind::cuda) {
    // Checked before the workspace: a caller past the limit learns that first.
    LC_CHECK(vocab <= sampling_cuda_max_vocab,
             "sample on CUDA supports vocab <= " << sampling_cuda_max_vocab << "; got " << vocab);
    std::int64_t const need = sampling_workspace_bytes(batch, vocab);
    LC_CHECK(workspace.type() == dtype::u8 && workspace.rank() == 1 && workspace.size(0) >= need,
             "sample needs a u8 workspace of at least "
                 << need << " bytes (sampling_workspace_bytes(" << batch << ", " << vocab
                 << ")); got " << workspace);
    LC_CHECK(
        need == 0 || batch == 0 || reinterpret_cast<std::uintptr_t>(workspace.data()) % 16 == 0,
        "sample needs a 16-byte aligned workspace; got " << workspace.data());
  }
  sampling_params p;
  p.batch = batch;
  p.vocab = vocab;
  p.logits = static_cast<float const*>(l.data());
  p.logits_stride = batch <= 1 ? vocab : l.stride(0);
  p.requests = static_cast<sampling_request const*>(in.requests.data());
  p.positions = static_cast<std::int32_t const*>(in.positions.data());
  p.history_ids = static_cast<std::int32_t const*>(in.history_ids.data());
  p.history_offsets = static_cast<std::int32_t const*>(in.history_offsets.data());
  p.history_total = in.history_ids.size(0);
  p.tokens = static_cast<std::int32_t*>(out.tokens.data());
  p.logprobs = static_cast<float*>(out.logprobs.data());
  p.top_ids = static_cast<std::int32_t*>(out.top_ids.data());
  p.top_logprobs = static_cast<float*>(out.top_logprobs.data());
  p.workspace = static_cast<unsigned char*>(workspace.data());
  if (batch == 0) return p;
  LC_CHECK(p.logits && p.requests && p.positions && p.history_offsets && p.tokens && p.logprobs &&
               p.top_ids && p.top_logprobs && (p.history_total == 0 || p.history_ids),
           "sample of " << batch << " rows got a null pointer");
  LC_CHECK(reinterpret_cast<std::uintptr_t>(p.requests) % alignof(sampling_request) == 0,
           "sample needs requests aligned to " << alignof(sampling_request) << " bytes; got "
                                               << in.requests.data());
  return p;
}

}  // namespace lightcore::kernels::detail
