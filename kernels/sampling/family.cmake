lightcore_kernel_family(sampling
  CPU sampling_checks.cpp sampling_cpu.cpp
  CUDA sampling_cuda.cu instantiations/sampling_f32.cu)
