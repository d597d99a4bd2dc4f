/* cli/human.h: numbers as the command prints them for people. */
#ifndef AB_CLI_HUMAN_H
#define AB_CLI_HUMAN_H

#include <stddef.h>
#include <stdint.h>

/* b bytes in binary units, one decimal ("1.5 GiB", "512 B"), into buf; returns buf. */
const char *human_bytes(uint64_t b, char *buf, size_t n);

#endif
