// sampling: the next token of every request in a batch from its f32 logits, with per-request
// parameters, in three kernel launches on the GPU (fixed geometry, no host synchronisation, no
// allocation: capturable in a CUDA graph), and a CPU reference that chooses the same tokens.
//
// Semantics, row by row (b = the row, l = its logits [vocab], r = requests[b]):
//  0. Logprobs (r.num_logprobs >= 0) are of the RAW model distribution: log_softmax(l) of the
//     logits as given, before penalties and temperature. logprobs[b] is the chosen token's;
//     top_ids[b] / top_logprobs[b] hold the n = min(r.num_logprobs, vocab) largest, in descending
//     order, lowest id first among equal logits, then padding (id -1, logprob -inf) up to
//     sampling_max_logprobs. With r.num_logprobs = -1 logprobs[b] is NaN and every slot padding.
//  1. Penalties, on a private copy of the row (the logits tensor is only read): for each DISTINCT
//     id in the request's history (history_ids[offsets[b], offsets[b+1])), the repetition penalty
//     (l > 0 ? l / rep : l * rep) then the presence penalty (l -= presence); then for EVERY
//     occurrence the frequency penalty (l -= frequency), i.e. frequency subtracted count times,
//     each subtraction rounded (so the order of occurrences does not matter).
//  2. Greedy rows (r.temperature == 0): the argmax of the penalised logits, lowest id on ties.
//  3. Otherwise z = l / T (IEEE division), z_max = max z, w = exp(z - z_max) (the unnormalised
//     softmax; exp as in sampling_math.hpp). Filters, each defined by a VALUE threshold so that
//     equal z are kept or dropped together, applied in this order:
//       top_k (0 < k < vocab): keep z >= the k-th largest z (counting repeats);
//       top_p (p < 1): over the tokens still kept, in descending z, the smallest prefix whose
//         mass sum(w) reaches p * sum over all kept of w; keep the kept tokens with z >= the
//         smallest z in that prefix;
//       min_p (m > 0): keep w >= m, i.e. p >= m * p_max.
//     The token with the largest z survives every filter, so the kept set is never empty.
//  4. The draw is an exponential race over the kept tokens: token = argmax over kept i of
//     (z_i - z_max) - ln(-ln(u_i)), lowest id on ties, with u_i a uniform from Philox4x32-10
//     (key = r.seed, counter = (i / 4, positions[b]); sampling_math.hpp). The draw is
//     distributed as the kept set's renormalised softmax, depends on nothing but (logits, r,
//     position, history), and is the same token on both backends.
// History ids outside [0, vocab) are an error on the CPU backend and skipped on the GPU.
#pragma once

#include <cstdint>
#include <limits>

#include "kernels/sampling/sampling_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// Inputs of one sampling step. All on the backend's device.
struct sampling_inputs {
  tensor_view logits;       // [batch, vocab] f32, read only; unit column stride, row stride >=
                            // vocab (a padded lm-head output is fine)
  tensor_view requests;     // [batch, sizeof(sampling_request)] u8: see request_view()
  tensor_view positions;    // [batch] i32, >= 0: tokens the request has generated so far
  tensor_view history_ids;  // [total] i32: every request's generated ids, concatenated
  tensor_view
      history_offsets;  // [batch + 1] i32: 0 = off[0] <= off[1] <= ... <= off[batch] = total
};

// Outputs of one sampling step, contiguous, on the backend's device.
struct sampling_outputs {
  tensor_view tokens;        // [batch] i32
  tensor_view logprobs;      // [batch] f32: the chosen token's raw logprob (NaN without logprobs)
  tensor_view top_ids;       // [batch, sampling_max_logprobs] i32, padded with -1
  tensor_view top_logprobs;  // [batch, sampling_max_logprobs] f32, padded with -inf
};

// The largest vocab the CUDA kernel takes: the exact path (a cluster of 8 blocks) keeps a row in
// shared memory, at most 48 Ki logits per block.
inline constexpr std::int64_t sampling_cuda_max_vocab = std::int64_t(8) * 48 * 1024;
inline constexpr std::int64_t sampling_max_batch = std::int64_t(1) << 20;

// The CUDA path streams each row in chunks of sampling_chunk logits (launch 1), each chunk writing
// a summary and at most sampling_chunk_candidates candidate tokens to the workspace; launch 2
// merges them per row (sampling.cuh).
inline constexpr std::int64_t sampling_chunk = 4096;
inline constexpr std::int64_t sampling_chunk_candidates = 512;
inline constexpr std::int64_t sampling_chunk_summary_bytes = 40;  // see sampling_chunks.cuh

// The workspace bytes a CUDA step over [batch, vocab] needs (the CPU backend needs none and
// ignores the workspace): a 16-byte header, the list of rows left to the exact path, and per
// row and chunk a summary and a candidate list of (logit, id) pairs. 33.9 MB at batch 256, vocab
// 129280. Depends on the shape alone, so a CUDA graph can keep one buffer. After a step, its first
// 4 bytes hold (i32) how many rows took the exact path (for tests and diagnostics).
inline std::int64_t sampling_workspace_bytes(std::int64_t batch, std::int64_t vocab) {
  LC_CHECK(batch >= 0 && vocab >= 1,
           "sampling_workspace_bytes needs batch >= 0 and vocab >= 1; got batch "
               << batch << ", vocab " << vocab);
  if (batch == 0) return 0;
  auto const round16 = [](std::int64_t x) { return (x + 15) / 16 * 16; };
  std::int64_t const chunks = (vocab + sampling_chunk - 1) / sampling_chunk;
  return 16 + round16(batch * 4) + round16(batch * chunks * sampling_chunk_summary_bytes) +
         batch * chunks * sampling_chunk_candidates * 8;
}

// The requests of a batch as the u8 view that sampling_inputs::requests takes.
inline tensor_view request_view(sampling_request const* requests, std::int64_t batch,
                                device where) {
  return tensor_view(const_cast<sampling_request*>(requests), dtype::u8,
                     {batch, std::int64_t(sizeof(sampling_request))}, where);
}

namespace detail {

void sample_cpu(sampling_params const& p);  // checks every request and history id first
#if defined(LIGHTCORE_WITH_CUDA)
void sample_cuda(sampling_params const& p, int ordinal, CUstream_st* stream);

// Defined in sampling.cuh, instantiated once in instantiations/sampling_f32.cu.
template <class T>
void launch_sampling(sampling_params const& p, CUstream_st* stream);
#endif

// Throws, naming the field and its allowed range, when a request is out of range.
void check_sampling_request(sampling_request const& r, std::int64_t row);

sampling_params make_sampling_params(device where, sampling_inputs const& in,
                                     sampling_outputs const& out, tensor_view const& workspace);

// Steps of the CPU reference, exposed so that the tests can check them one by one.
// Applies step 1's penalties to row [vocab] for the history ids[0, count) (ids checked).
void sampling_penalise_cpu(float* row, std::int64_t vocab, std::int32_t const* ids,
                           std::int64_t count, sampling_request const& r);
// Step 3's filters: kept[i] = 1 for the tokens that z [vocab] (= penalised / T) keeps, else 0.
void sampling_kept_cpu(float const* z, std::int64_t vocab, sampling_request const& r,
                       std::uint8_t* kept);

}  // namespace detail

// Which CUDA launches a step takes. automatic: the streamed candidates for every row that can use
// them, the exact path for the rest. exact: every row straight to the exact path, one cluster
// per row, for a batch whose rows would all take it anyway (sampling_row_kind(r, vocab) ==
// sampling_row_exact for each: logprob rows, temperature-only rows), which then saves the
// streaming launches. Any route gives the same tokens; the CPU backend ignores it.
enum class sampling_route : std::uint8_t { automatic, exact };

// Samples one token per row of in.logits with the semantics above; writes every element of out.
// The workspace is a u8 view on the device; on the CUDA backend of at least
// sampling_workspace_bytes(batch, vocab) bytes (its contents need no initialisation). Ordered on
// `stream` (the CPU backend runs it before returning). On the CUDA backend the per-request
// parameters, positions and history are read on the device and not checked (see sampling_request);
// vocab must be <= sampling_cuda_max_vocab.
template <Backend B>
void sample(B& backend, sampling_inputs const& in, sampling_outputs const& out,
            tensor_view const& workspace, [[maybe_unused]] typename B::stream_type const& stream,
            sampling_route route = sampling_route::automatic) {
  sampling_params p = detail::make_sampling_params(backend.where(), in, out, workspace);
  p.exact_only = route == sampling_route::exact;
  if (p.batch == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::sample_cpu(p);
  } else {
    static_assert(B::kind == device_kind::cuda, "sample: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::sample_cuda(p, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "sample on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
