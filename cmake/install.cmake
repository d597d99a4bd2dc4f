include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS arraybridge arraybridge_static EXPORT arraybridgeTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES include/arraybridge.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/arraybridge DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT arraybridgeTargets NAMESPACE arraybridge::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/arraybridge)
configure_package_config_file(cmake/arraybridgeConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/arraybridge)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/arraybridge)

set(AB_PC_REQUIRES_PRIVATE "ck")
if(AB_WITH_JEMALLOC)
  set(AB_PC_REQUIRES_PRIVATE "ck jemalloc")
endif()
set(AB_PC_LIBS_PRIVATE "-lpthread")
if(AB_HAVE_CUDA) # static linking needs cudart_static; the shared library carries it inside
  set(AB_PC_LIBS_PRIVATE "-L${CUDAToolkit_LIBRARY_DIR} -lcudart_static -ldl -lrt -lpthread")
endif()
# Relocatable: the .pc finds the prefix from where it lies, so `cmake --install --prefix` works.
file(RELATIVE_PATH AB_PC_TO_PREFIX "${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig" "${CMAKE_INSTALL_PREFIX}")
string(REGEX REPLACE "/$" "" AB_PC_TO_PREFIX "${AB_PC_TO_PREFIX}")
configure_file(cmake/arraybridge.pc.in ${CMAKE_CURRENT_BINARY_DIR}/arraybridge.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/arraybridge.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
