lightcore_kernel_family(moe
  CPU moe_checks.cpp moe_cpu.cpp moe_experts_checks.cpp moe_experts_cpu.cpp
  CUDA moe_cuda.cu instantiations/moe_routing_epl2.cu instantiations/moe_routing_epl8.cu
       instantiations/moe_align_w32.cu instantiations/moe_route_align_epl2.cu
       instantiations/moe_route_align_epl8.cu moe_experts_cuda.cu instantiations/moe_combine.cu
       instantiations/moe_grouped_gemm_gate_up_bf16_m64.cu
       instantiations/moe_grouped_gemm_gate_up_bf16_m128.cu
       instantiations/moe_grouped_gemm_gate_up_fp8_m64.cu
       instantiations/moe_grouped_gemm_gate_up_fp8_m128.cu
       instantiations/moe_grouped_gemm_down_bf16_m64.cu
       instantiations/moe_grouped_gemm_down_bf16_m128.cu
       instantiations/moe_grouped_gemm_down_fp8_m64.cu
       instantiations/moe_grouped_gemm_down_fp8_m128.cu
       instantiations/moe_grouped_gemm_gate_up_bf16_m64_decode.cu
       instantiations/moe_grouped_gemm_gate_up_fp8_m64_decode.cu
       instantiations/moe_grouped_gemm_down_bf16_m64_decode.cu
       instantiations/moe_grouped_gemm_down_fp8_m64_decode.cu
       instantiations/moe_grouped_gemm_wgmma_gate_up_bf16_m64.cu
       instantiations/moe_grouped_gemm_wgmma_down_bf16_m64.cu
       instantiations/moe_grouped_gemm_wgmma_gate_up_fp8_m64.cu
       instantiations/moe_grouped_gemm_wgmma_down_fp8_m64.cu
       instantiations/moe_gemv_gate_up_m1.cu instantiations/moe_gemv_gate_up_m4.cu
       instantiations/moe_gemv_down_m1.cu instantiations/moe_gemv_down_m4.cu)
