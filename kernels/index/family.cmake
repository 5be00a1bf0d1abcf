lightcore_kernel_family(index CPU index_cpu.cpp CUDA index_cuda.cu)
