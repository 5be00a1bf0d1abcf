lightcore_kernel_family(activation
  CPU activation_cpu.cpp
  CUDA activation_cuda.cu instantiations/silu_and_mul_bf16.cu)
