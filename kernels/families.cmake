# The kernel families: each folder's family.cmake calls lightcore_kernel_family() with its sources
# (see kernels/CMakeLists.txt).
file(GLOB lightcore_family_files CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*/family.cmake)
foreach(family_file IN LISTS lightcore_family_files)
  include(${family_file})
endforeach()
