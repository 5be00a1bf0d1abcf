lightcore_kernel_family(gemm
  CPU gemm_cpu.cpp
  CUDA gemm_cublaslt.cpp fp8_small_m_cuda.cu instantiations/gemm_fp8_small_m_t1.cu
    instantiations/gemm_fp8_small_m_t2.cu instantiations/gemm_fp8_small_m_t4.cu
    instantiations/gemm_fp8_small_m_t8.cu instantiations/gemm_fp8_small_m_t16.cu gemv_bf16_cuda.cu
    instantiations/gemm_gemv_bf16_m1.cu instantiations/gemm_gemv_bf16_m2.cu
    instantiations/gemm_gemv_bf16_m4.cu)

# The CPU path multiplies with Eigen (header-only; private to the library's own sources).
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
get_target_property(lightcore_eigen_include Eigen3::Eigen INTERFACE_INCLUDE_DIRECTORIES)
target_include_directories(lightcore_kernels SYSTEM PRIVATE ${lightcore_eigen_include})
# The CUDA path is cuBLASLt (bf16, strided-batched bf16, FP8 with block scales), with
# weight-streaming kernels for the small-M products it is slow at (gemv_bf16, fp8_small_m).
if(LIGHTCORE_WITH_CUDA)
  target_link_libraries(lightcore_kernels PRIVATE CUDA::cublasLt)
endif()
