lightcore_kernel_family(convert
  CPU convert_cpu.cpp
  CUDA convert_cuda.cu
       instantiations/convert_f32_bf16.cu instantiations/convert_bf16_f32.cu
       instantiations/convert_f32_f16.cu instantiations/convert_f16_f32.cu
       instantiations/convert_f32_fp8_e4m3.cu instantiations/convert_fp8_e4m3_f32.cu
       instantiations/convert_bf16_fp8_e4m3.cu instantiations/convert_fp8_e4m3_bf16.cu)
