/*
 * arraybridge/version.h: the one place the version lives. CMake (CMakeLists.txt: the library's
 * version and soname, the CMake package, arraybridge.pc) and the Python package's metadata
 * (pyproject.toml) read the three numbers below; the string is made from them.
 */
#ifndef ARRAYBRIDGE_VERSION_H
#define ARRAYBRIDGE_VERSION_H

#define AB_VERSION_MAJOR 0
#define AB_VERSION_MINOR 1
#define AB_VERSION_PATCH 0
#define AB_VERSION_HEX ((AB_VERSION_MAJOR << 16) | (AB_VERSION_MINOR << 8) | AB_VERSION_PATCH)

#define AB__VERSION_STR(x) #x
#define AB__VERSION_XSTR(x) AB__VERSION_STR(x)
#define AB_VERSION_STRING                                                                       \
  AB__VERSION_XSTR(AB_VERSION_MAJOR) "." AB__VERSION_XSTR(AB_VERSION_MINOR) "." AB__VERSION_XSTR(AB_VERSION_PATCH)

#endif
