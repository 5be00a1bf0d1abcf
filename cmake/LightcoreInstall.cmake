# cmake --install: headers, lightcore::core and lightcore::kernels, and a package config so that
# another project can find_package(lightcore) and link lightcore::core.
include(CMakePackageConfigHelpers)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/lightcore
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.hpp" PATTERN "*.cuh")
install(DIRECTORY ${PROJECT_SOURCE_DIR}/kernels
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/lightcore FILES_MATCHING PATTERN "*.hpp"
        PATTERN "*.cuh")
install(TARGETS lightcore_core lightcore_kernels EXPORT lightcoreTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(LIGHTCORE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/lightcore)
install(EXPORT lightcoreTargets NAMESPACE lightcore:: DESTINATION ${LIGHTCORE_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/lightcoreConfig.cmake.in
  ${PROJECT_BINARY_DIR}/lightcoreConfig.cmake INSTALL_DESTINATION ${LIGHTCORE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/lightcoreConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/lightcoreConfig.cmake
              ${PROJECT_BINARY_DIR}/lightcoreConfigVersion.cmake
        DESTINATION ${LIGHTCORE_CMAKE_DIR})
