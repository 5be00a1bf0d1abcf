# NCCL, the collectives under dist::nccl_communicator. Optional: where it is absent (or CUDA is
# off), lightcore::nccl is not defined and the NCCL tests are not built; everything else is.
# It ships with the CUDA toolkit on some machines (<cuda>/include/nccl.h, <cuda>/lib64) and as a
# system package on others (/usr/include, /usr/lib/x86_64-linux-gnu); NCCL_ROOT or NCCL_HOME may
# name another install.
set(LIGHTCORE_WITH_NCCL OFF)
if(LIGHTCORE_WITH_CUDA)
  find_path(LIGHTCORE_NCCL_INCLUDE_DIR nccl.h
            HINTS ENV NCCL_ROOT ENV NCCL_HOME ${CUDAToolkit_INCLUDE_DIRS}
            PATH_SUFFIXES include)
  find_library(LIGHTCORE_NCCL_LIBRARY nccl
               HINTS ENV NCCL_ROOT ENV NCCL_HOME ${CUDAToolkit_LIBRARY_DIR}
               PATH_SUFFIXES lib lib64)
  if(LIGHTCORE_NCCL_INCLUDE_DIR AND LIGHTCORE_NCCL_LIBRARY)
    file(STRINGS ${LIGHTCORE_NCCL_INCLUDE_DIR}/nccl.h nccl_version_lines
         REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
    set(nccl_version "")
    foreach(part MAJOR MINOR PATCH)
      string(REGEX MATCH "NCCL_${part} +([0-9]+)" _ "${nccl_version_lines}")
      list(APPEND nccl_version ${CMAKE_MATCH_1})
    endforeach()
    list(JOIN nccl_version "." LIGHTCORE_NCCL_VERSION)
    set(LIGHTCORE_WITH_NCCL ON)
    add_library(lightcore_nccl INTERFACE)
    add_library(lightcore::nccl ALIAS lightcore_nccl)
    target_include_directories(lightcore_nccl INTERFACE ${LIGHTCORE_NCCL_INCLUDE_DIR})
    target_link_libraries(lightcore_nccl INTERFACE lightcore::core ${LIGHTCORE_NCCL_LIBRARY})
    target_compile_definitions(lightcore_nccl INTERFACE LIGHTCORE_WITH_NCCL=1)
    message(STATUS "NCCL ${LIGHTCORE_NCCL_VERSION}: ${LIGHTCORE_NCCL_LIBRARY}")
  else()
    message(STATUS "NCCL not found (set NCCL_ROOT to its install): dist::nccl_communicator and "
                   "its tests are not built")
  endif()
else()
  message(STATUS "NCCL skipped: the CUDA backend is off, so dist::nccl_communicator is not built")
endif()
