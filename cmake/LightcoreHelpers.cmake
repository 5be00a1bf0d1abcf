# Build helpers shared by tests, benchmarks and examples.

# ccache, where present, keeps CI's rebuilds of unchanged files free.
find_program(LIGHTCORE_CCACHE ccache)
if(LIGHTCORE_CCACHE)
  foreach(lang CXX CUDA)
    if(NOT CMAKE_${lang}_COMPILER_LAUNCHER)
      set(CMAKE_${lang}_COMPILER_LAUNCHER ${LIGHTCORE_CCACHE})
    endif()
  endforeach()
endif()

# Warnings for lightcore's own host code.
function(lightcore_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>)
endfunction()

# lightcore_add_test(<name> SOURCES <files...> [LIBS <targets...>] [LABELS <labels...>] [SERIAL])
# One GoogleTest binary per area. .cu sources make it a CUDA test binary; such binaries are only
# added when the CUDA backend is built. Test cases are discovered when CTest runs, so building
# never needs a GPU. SERIAL: its cases run alone (they measure device-wide state, such as the GPU
# memory in use, that other tests running at the same time would disturb).
function(lightcore_add_test name)
  cmake_parse_arguments(arg "SERIAL" "" "SOURCES;LIBS;LABELS" ${ARGN})
  set(has_cuda OFF)
  foreach(src IN LISTS arg_SOURCES)
    if(src MATCHES "\\.cu$")
      set(has_cuda ON)
    endif()
  endforeach()
  if(has_cuda AND NOT LIGHTCORE_WITH_CUDA)
    return()
  endif()
  add_executable(${name} ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE lightcore::core GTest::gtest GTest::gtest_main ${arg_LIBS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)  # "common/..." helpers
  lightcore_warnings(${name})
  if(has_cuda)
    lightcore_cuda_target(${name})
  endif()
  set(serial FALSE)
  if(arg_SERIAL)
    set(serial TRUE)
  endif()
  gtest_discover_tests(${name} DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
                       PROPERTIES LABELS "${arg_LABELS}" RUN_SERIAL ${serial})
endfunction()

# lightcore_add_bench(<name> SOURCES <files...> [LIBS <targets...>])
function(lightcore_add_bench name)
  cmake_parse_arguments(arg "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE lightcore::core benchmark::benchmark ${arg_LIBS})
  lightcore_warnings(${name})
  foreach(src IN LISTS arg_SOURCES)
    if(src MATCHES "\\.cu$")
      lightcore_cuda_target(${name})
      break()
    endif()
  endforeach()
endfunction()
