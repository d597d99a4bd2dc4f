# Every internal header of the library compiles on its own, included first and alone: each says
# what it needs, so a layer can be read and used without the layers above it (devices/device.h
# without the runtime's structures, queue/queue.h with only platform/platform.h). A build check:
# a header that leans on what its includer happened to include first breaks the build here.
set(AB_ALONE_HEADERS platform/platform.h queue/queue.h devices/device.h runtime/internal.h devices/host/host.h
    devices/cuda/kernels.h)
if(AB_HAVE_OPENCL)
  list(APPEND AB_ALONE_HEADERS devices/opencl/opencl.h)
endif()
set(AB_ALONE_SOURCES)
foreach(h IN LISTS AB_ALONE_HEADERS)
  string(MAKE_C_IDENTIFIER ${h} id)
  set(src ${CMAKE_CURRENT_BINARY_DIR}/alone/${id}.c)
  file(CONFIGURE OUTPUT ${src} CONTENT "#include \"${h}\"\n")
  list(APPEND AB_ALONE_SOURCES ${src})
endforeach()
add_library(ab_headers_alone OBJECT ${AB_ALONE_SOURCES})
target_include_directories(ab_headers_alone PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/include
  ${DLPACK_INCLUDE_DIR})
target_link_libraries(ab_headers_alone PRIVATE PkgConfig::CK)
if(AB_HAVE_OPENCL)
  target_link_libraries(ab_headers_alone PRIVATE OpenCL::OpenCL)
endif()
