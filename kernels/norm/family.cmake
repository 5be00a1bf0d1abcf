lightcore_kernel_family(norm
  CPU norm_cpu.cpp
  CUDA norm_cuda.cu
       instantiations/rmsnorm_v1.cu instantiations/rmsnorm_v2.cu instantiations/rmsnorm_v4.cu
       instantiations/fused_add_rmsnorm_v1.cu instantiations/fused_add_rmsnorm_v2.cu
       instantiations/fused_add_rmsnorm_v4.cu)
