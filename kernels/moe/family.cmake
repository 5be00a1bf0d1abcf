lightcore_kernel_family(moe
  CPU moe_checks.cpp moe_cpu.cpp
  CUDA moe_cuda.cu instantiations/moe_routing_epl2.cu instantiations/moe_routing_epl8.cu
       instantiations/moe_align_w32.cu)
