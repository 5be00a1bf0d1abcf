lightcore_kernel_family(embedding
  CPU embedding_cpu.cpp
  CUDA embedding_cuda.cu instantiations/embedding_bf16.cu)
