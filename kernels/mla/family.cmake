lightcore_kernel_family(mla
  CPU mla_cpu.cpp
  CUDA mla_cuda.cu mla_kv_prepare_cuda.cu instantiations/kv_write_p1.cu
       instantiations/mla_kv_prepare_p1.cu instantiations/mla_decode_h16_p1.cu
       instantiations/mla_decode_wgmma_p1.cu instantiations/mla_merge_bf16.cu
       instantiations/mla_merge_project_bf16.cu)
