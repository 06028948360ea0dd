/* flex.h: FLEX for C programs (libflex.so, loaded with LD_PRELOAD or linked).
 *
 * FLEX serves read/write of managed files from a memory mapping of the file. A file is
 * managed when its path is under one of the prefixes in FLEX_PATHS (colon-separated), or
 * when it is opened with O_FLEX. The flag never reaches the kernel: without libflex.so
 * loaded, do not pass it (the kernel would reject or misread it). */
#ifndef FLEX_H
#define FLEX_H

#include <fcntl.h>

/* Opt-in open flag: manage this file with FLEX (octal 0100000000). */
#define O_FLEX 0100000000

/* Failure-atomic mode (FLEX_MODE=atomic) opt-in flag; reserved, see README. */
#define O_FLEX_ATOMIC 0200000000

#endif /* FLEX_H */
