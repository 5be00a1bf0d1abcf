# Resolves LIGHTCORE_CUDA (AUTO/ON/OFF) into LIGHTCORE_WITH_CUDA and enables the CUDA language.
include(CheckLanguage)
include(GNUInstallDirs)

set(LIGHTCORE_WITH_CUDA OFF)
if(LIGHTCORE_CUDA STREQUAL "AUTO" OR LIGHTCORE_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    # nvcc is often installed outside PATH; look where the CUDA toolkit puts it.
    find_program(LIGHTCORE_NVCC nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH /usr/local/cuda
                 PATH_SUFFIXES bin)
    if(LIGHTCORE_NVCC)
      set(CMAKE_CUDA_COMPILER ${LIGHTCORE_NVCC})
    endif()
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES ${LIGHTCORE_CUDA_ARCHS})
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(LIGHTCORE_WITH_CUDA ON)
    # CMake releases older than nvcc 13 (Debian 12 has 3.25) do not know that it speaks C++20,
    # and then refuse every CUDA target that needs cxx_std_20. Teach them the flag.
    if(NOT "cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES
       AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20)
      list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
    endif()
  elseif(NOT LIGHTCORE_CUDA STREQUAL "AUTO")
    message(FATAL_ERROR "LIGHTCORE_CUDA=${LIGHTCORE_CUDA} but no CUDA compiler (nvcc) was found; "
                        "install the CUDA toolkit, set CUDACXX, or configure with -DLIGHTCORE_CUDA=OFF")
  endif()
endif()

# lightcore_cuda_target(<target>): C++20 device code for LIGHTCORE_CUDA_ARCHS.
function(lightcore_cuda_target target)
  set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES "${LIGHTCORE_CUDA_ARCHS}"
                                             CUDA_SEPARABLE_COMPILATION OFF)
  target_compile_features(${target} PRIVATE cuda_std_20)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xcompiler=-Wall>)
endfunction()
