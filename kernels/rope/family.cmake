lightcore_kernel_family(rope
  CPU rope_cpu.cpp
  CUDA rope_cuda.cu instantiations/rope_bf16_d64.cu)
