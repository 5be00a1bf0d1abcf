// moe experts: the argument checks and the workspace size, shared by the backends.
#include <cstdint>

#include "kernels/gemm/gemm_params.hpp"
#include "kernels/moe/moe_experts.hpp"

namespace lightcore::kernels {
namespace {

void check_sizes(std::int64_t hidden, std::int64_t inter, std::int64_t block_m) {
  LC_CHECK(hidden > 0 && inter > 0 && hidden % moe_experts_dim_multiple == 0 &&
               inter % moe_experts_dim_multiple == 0,
           "moe_experts needs the hidden size H and the expert intermediate size I to be positive "
           "multiples of "
               << moe_experts_dim_multiple << " (the FP8 block and the GEMM tiles); got H "
               << hidden << ", I " << inter);
  LC_CHECK(moe_experts_block_m_supported(block_m),
           "moe_experts has grouped GEMM tiles for block_m 64 and 128; got " << block_m);
}

}  // namespace

std::int64_t moe_experts_workspace_bytes(std::int64_t tokens, std::int64_t top_k,
                                         std::int64_t num_experts, std::int64_t block_m,
                                         std::int64_t hidden, std::int64_t inter,
                                         moe_weight_format format) {
  check_sizes(hidden, inter, block_m);
  moe_align_sizes const cap = moe_align_capacity(tokens, top_k, num_experts, block_m);
  return make_moe_experts_workspace_layout(tokens, top_k, cap.sorted_rows, hidden, inter, format)
      .bytes;
}

namespace detail {
namespace {

void check_device(device where, char const* name, tensor_view const& v) {
  LC_CHECK(v.where() == where, "moe_experts on " << where << " needs every view there; " << name
                                                 << " is on " << v.where());
}

void check_contiguous(char const* name, tensor_view const& v, dtype type, dims const& shape) {
  LC_CHECK(v.type() == type && v.shape() == shape, "moe_experts needs "
                                                       << name << " " << type << " " << shape
                                                       << "; got " << v.type() << " " << v.shape());
  LC_CHECK(v.is_contiguous(), "moe_experts needs " << name << " contiguous; got " << v);
  LC_CHECK(v.numel() == 0 || reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0,
           "moe_experts needs " << name << " 16-byte aligned; got " << v.data());
}

// A [T, H] bf16 activation with unit column stride and 16-byte rows: its leading stride.
std::int64_t activation_ld(char const* name, tensor_view const& v, std::int64_t tokens,
                           std::int64_t hidden) {
  LC_CHECK(v.type() == dtype::bf16 && v.rank() == 2 && v.size(0) == tokens && v.size(1) == hidden,
           "moe_experts needs " << name << " [" << tokens << ", " << hidden << "] bf16; got "
                                << v.type() << " " << v.shape());
  std::int64_t const ld = tokens <= 1 ? hidden : v.stride(0);
  LC_CHECK(v.stride(1) == 1 && ld >= hidden && ld % 8 == 0 &&
               reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0,
           "moe_experts needs " << name
                                << " with unit column stride, a row stride >= H that is a multiple "
                                   "of 8 and 16-byte aligned data; got "
                                << v << " at " << v.data());
  return ld;
}

}  // namespace

moe_experts_params make_moe_experts_params(device where, tensor_view const& hidden,
                                           tensor_view const& topk_ids,
                                           tensor_view const& topk_weights,
                                           moe_align_outputs const& align, std::int64_t block_m,
                                           moe_expert_weights const& weights,
                                           tensor_view const& out, tensor_view const& workspace) {
  tensor_view const& gu = weights.gate_up;
  tensor_view const& dn = weights.down;
  LC_CHECK(gu.rank() == 3 && dn.rank() == 3,
           "moe_experts needs gate_up [E, 2I, H] and down [E, H, I]; got gate_up "
               << gu.shape() << ", down " << dn.shape());
  std::int64_t const experts = gu.size(0), inter = gu.size(1) / 2, h = gu.size(2);
  LC_CHECK(gu.size(1) % 2 == 0 && dn.size(0) == experts && dn.size(1) == h && dn.size(2) == inter,
           "moe_experts weights do not agree: gate_up " << gu.shape() << " [E, 2I, H], down "
                                                        << dn.shape() << " [E, H, I]");
  check_sizes(h, inter, block_m);
  LC_CHECK(experts >= 1 && experts <= moe_max_stacked_experts,
           "moe_experts supports 1 to " << moe_max_stacked_experts << " experts (routed and shared "
                                        << "folded in); got " << experts);
  LC_CHECK(gu.type() == dn.type() && (gu.type() == dtype::bf16 || gu.type() == dtype::fp8_e4m3),
           "moe_experts supports gate_up and down both bf16 or both fp8_e4m3; got "
               << gu.type() << " and " << dn.type());
  moe_weight_format const format =
      gu.type() == dtype::bf16 ? moe_weight_format::bf16 : moe_weight_format::fp8_block;
  check_contiguous("gate_up", gu, gu.type(), gu.shape());
  check_contiguous("down", dn, dn.type(), dn.shape());

  LC_CHECK(topk_ids.type() == dtype::i32 && topk_ids.rank() == 2,
           "moe_experts needs topk_ids [tokens, top_k] i32; got " << topk_ids.type() << " "
                                                                  << topk_ids.shape());
  std::int64_t const tokens = topk_ids.size(0), k = topk_ids.size(1);
  moe_align_sizes const cap = moe_align_capacity(tokens, k, experts, block_m);
  check_contiguous("topk_ids", topk_ids, dtype::i32, {tokens, k});
  check_contiguous("topk_weights", topk_weights, dtype::f32, {tokens, k});
  check_contiguous("inverse", align.inverse, dtype::i32, {tokens, k});
  LC_CHECK(align.sorted_token_ids.rank() == 1 && align.expert_of_block.rank() == 1 &&
               align.sorted_token_ids.size(0) >= cap.sorted_rows &&
               align.expert_of_block.size(0) >= cap.blocks &&
               align.sorted_token_ids.size(0) >= align.expert_of_block.size(0) * block_m,
           "moe_experts needs moe_align's outputs for tokens "
               << tokens << ", top_k " << k << ", experts " << experts << ", block_m " << block_m
               << ": sorted_token_ids [>= " << cap.sorted_rows << "] and expert_of_block [>= "
               << cap.blocks << "] with sorted_token_ids covering every block; got "
               << align.sorted_token_ids.shape() << " and " << align.expert_of_block.shape());
  check_contiguous("sorted_token_ids", align.sorted_token_ids, dtype::i32,
                   align.sorted_token_ids.shape());
  check_contiguous("expert_of_block", align.expert_of_block, dtype::i32,
                   align.expert_of_block.shape());

  moe_experts_params p;
  p.hidden_ld = activation_ld("hidden", hidden, tokens, h);
  p.out_ld = activation_ld("out", out, tokens, h);
  if (format == moe_weight_format::fp8_block) {
    std::int64_t const gu_ld = gemm_fp8_weight_scale_ld(h), dn_ld = gemm_fp8_weight_scale_ld(inter);
    dims const want_gu{experts, (2 * inter + 127) / 128, gu_ld};
    dims const want_dn{experts, (h + 127) / 128, dn_ld};
    LC_CHECK(weights.gate_up_scales.type() == dtype::f32 &&
                 weights.gate_up_scales.shape() == want_gu &&
                 weights.gate_up_scales.is_contiguous(),
             "moe_experts with FP8 weights needs gate_up_scales f32 contiguous "
                 << want_gu << " ([E, ceil(2I/128), gemm_fp8_weight_scale_ld(H)]); got "
                 << weights.gate_up_scales);
    LC_CHECK(weights.down_scales.type() == dtype::f32 && weights.down_scales.shape() == want_dn &&
                 weights.down_scales.is_contiguous(),
             "moe_experts with FP8 weights needs down_scales f32 contiguous "
                 << want_dn << " ([E, ceil(H/128), gemm_fp8_weight_scale_ld(I)]); got "
                 << weights.down_scales);
    check_device(where, "gate_up_scales", weights.gate_up_scales);
    check_device(where, "down_scales", weights.down_scales);
    p.gate_up_scales = weights.gate_up_scales.data_as<float>();
    p.down_scales = weights.down_scales.data_as<float>();
    p.gate_up_scales_ld = gu_ld;
    p.down_scales_ld = dn_ld;
  } else {
    LC_CHECK(weights.gate_up_scales.data() == nullptr && weights.down_scales.data() == nullptr,
             "moe_experts with bf16 weights takes no weight scales; pass empty views");
  }
  std::int64_t const need =
      make_moe_experts_workspace_layout(tokens, k, cap.sorted_rows, h, inter, format).bytes;
  LC_CHECK(
      workspace.is_contiguous() && std::int64_t(workspace.nbytes()) >= need &&
          reinterpret_cast<std::uintptr_t>(workspace.data()) % moe_experts_workspace_alignment == 0,
      "moe_experts needs a contiguous, "
          << moe_experts_workspace_alignment << "-byte aligned workspace of at least " << need
          << " bytes (moe_experts_workspace_bytes); got " << workspace.nbytes() << " bytes at "
          << workspace.data());
  for (auto const& [name, v] : {std::pair<char const*, tensor_view const*>{"hidden", &hidden},
                                {"topk_ids", &topk_ids},
                                {"topk_weights", &topk_weights},
                                {"sorted_token_ids", &align.sorted_token_ids},
                                {"expert_of_block", &align.expert_of_block},
                                {"inverse", &align.inverse},
                                {"gate_up", &gu},
                                {"down", &dn},
                                {"out", &out},
                                {"workspace", &workspace}})
    check_device(where, name, *v);
  // out is written while hidden and the workspace are read: they must not share memory.
  auto const span = [](tensor_view const& v) {
    auto const a = reinterpret_cast<std::uintptr_t>(v.data());
    std::int64_t const last =
        v.rank() == 2 ? (v.size(0) - 1) * v.stride(0) + v.size(1) : std::int64_t(v.numel());
    return std::pair{a, a + std::uintptr_t(last) * v.element_size()};
  };
  auto const [o0, o1] = span(out);
  for (tensor_view const* v : {&hidden, &workspace}) {
    auto const [v0, v1] = span(*v);
    LC_CHECK(tokens == 0 || o1 <= v0 || v1 <= o0,
             "moe_experts needs out disjoint from hidden and the workspace; out at "
                 << out.data() << " overlaps " << *v << " at " << v->data());
  }

  p.hidden = hidden.data();
  p.topk_ids = topk_ids.data_as<std::int32_t>();
  p.topk_weights = topk_weights.data_as<float>();
  p.sorted_ids = align.sorted_token_ids.data_as<std::int32_t>();
  p.expert_of_block = align.expert_of_block.data_as<std::int32_t>();
  p.inverse = align.inverse.data_as<std::int32_t>();
  p.gate_up = gu.data();
  p.down = dn.data();
  p.out = out.data();
  p.workspace = workspace.data();
  p.tokens = tokens;
  p.top_k = k;
  p.experts = experts;
  LC_CHECK(weights.shared >= 0 && weights.shared <= experts,
           "moe_experts: the shared experts of the stack (" << weights.shared << ") must be in [0, "
                                                            << experts << "]");
  p.shared_experts = weights.shared;
  p.hidden_size = h;
  p.inter = inter;
  p.block_m = block_m;
  p.sorted_capacity = align.sorted_token_ids.size(0);
  p.block_capacity = align.expert_of_block.size(0);
  p.format = format;
  return p;
}

}  // namespace detail
}  // namespace lightcore::kernels
