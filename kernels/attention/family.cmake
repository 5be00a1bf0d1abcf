lightcore_kernel_family(attention
  CPU attention_cpu.cpp
  CUDA attention_cuda.cu instantiations/prefill_wgmma_d192_v128.cu
       instantiations/prefill_wgmma_d128_v128.cu instantiations/prefill_d64_v64.cu
       instantiations/latent_gather_p1.cu)
lightcore_kernel_family(attention
  CPU gqa_decode_cpu.cpp
  CUDA gqa_decode_cuda.cu instantiations/gqa_decode_d64.cu instantiations/gqa_decode_d128.cu)
