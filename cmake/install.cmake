# What `cmake --install` puts where, by component: Runtime (the shared library, the command and
# its man page), Development (headers, the static library, the CMake package, arraybridge.pc).
# A consumer of the shared library needs nothing else: no CUDA toolkit (cudart is inside it), no
# DLPack package (the dlpack.h it was built with is installed with the headers), no OpenCL or ck
# headers. Only the static library needs its dependencies' development files; the CMake package
# defines its target where they are found (cmake/arraybridgeConfig.cmake.in).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(AB_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/arraybridge)

install(TARGETS arraybridge EXPORT arraybridgeTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime NAMELINK_COMPONENT Development
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS arraybridge_static EXPORT arraybridgeStaticTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES include/arraybridge.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development)
install(DIRECTORY include/arraybridge DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development)
install(FILES ${DLPACK_INCLUDE_DIR}/dlpack/dlpack.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/arraybridge/dlpack COMPONENT Development)
install(EXPORT arraybridgeTargets NAMESPACE arraybridge:: DESTINATION ${AB_CMAKE_DIR} COMPONENT Development)
install(EXPORT arraybridgeStaticTargets NAMESPACE arraybridge:: DESTINATION ${AB_CMAKE_DIR}
  COMPONENT Development)

# The static library's link dependencies beyond the C library, for the CMake package and the
# .pc: -l names, each found (by the package) where the consumer links.
set(AB_STATIC_LIBS ck)
if(AB_WITH_JEMALLOC)
  list(APPEND AB_STATIC_LIBS jemalloc)
endif()
if(AB_HAVE_OPENCL)
  list(APPEND AB_STATIC_LIBS OpenCL)
endif()
set(AB_STATIC_CUDA_NOTE "")
if(AB_HAVE_CUDA)
  set(AB_STATIC_CUDA_NOTE ", and the CUDA toolkit's cudart_static")
endif()
configure_package_config_file(cmake/arraybridgeConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfig.cmake INSTALL_DESTINATION ${AB_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/arraybridgeConfigVersion.cmake DESTINATION ${AB_CMAKE_DIR}
  COMPONENT Development)

# pkg-config: no Requires.private, since pkg-config resolves private requirements even for
# --cflags, and a shared link must not need ck.pc or jemalloc.pc. The static link's libraries go
# in Libs.private; cudart_static's folder is a variable, the build machine's by default:
#   pkg-config --static --define-variable=cudalibdir=/opt/cuda/lib64 --libs arraybridge
list(TRANSFORM AB_STATIC_LIBS PREPEND -l OUTPUT_VARIABLE AB_PC_LIBS_PRIVATE)
list(APPEND AB_PC_LIBS_PRIVATE -lpthread)
set(AB_PC_VARIABLES "")
if(AB_HAVE_CUDA)
  set(AB_PC_VARIABLES "cudalibdir=${CUDAToolkit_LIBRARY_DIR}\n")
  list(APPEND AB_PC_LIBS_PRIVATE "-L\${cudalibdir}" -lcudart_static -ldl -lrt)
endif()
list(JOIN AB_PC_LIBS_PRIVATE " " AB_PC_LIBS_PRIVATE)
# Relocatable: the .pc finds the prefix from where it lies, so `cmake --install --prefix` works.
file(RELATIVE_PATH AB_PC_TO_PREFIX "${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig" "${CMAKE_INSTALL_PREFIX}")
string(REGEX REPLACE "/$" "" AB_PC_TO_PREFIX "${AB_PC_TO_PREFIX}")
configure_file(cmake/arraybridge.pc.in ${CMAKE_CURRENT_BINARY_DIR}/arraybridge.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/arraybridge.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
  COMPONENT Development)
