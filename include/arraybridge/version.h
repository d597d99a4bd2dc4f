/* arraybridge/version.h: the one place the version lives. CMake parses these lines. */
#ifndef ARRAYBRIDGE_VERSION_H
#define ARRAYBRIDGE_VERSION_H

#define AB_VERSION_MAJOR 0
#define AB_VERSION_MINOR 1
#define AB_VERSION_PATCH 0
#define AB_VERSION_HEX ((AB_VERSION_MAJOR << 16) | (AB_VERSION_MINOR << 8) | AB_VERSION_PATCH)
#define AB_VERSION_STRING "0.1.0"

#endif
