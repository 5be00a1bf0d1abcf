lightcore_kernel_family(quant
  CPU quant_cpu.cpp
  CUDA quant_cuda.cu instantiations/quant_bf16_fp8_e4m3.cu)
