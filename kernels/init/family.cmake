lightcore_kernel_family(init
  CPU init_cpu.cpp
  CUDA init_cuda.cu
       instantiations/init_bf16.cu instantiations/init_f32.cu instantiations/init_fp8_e4m3.cu)
