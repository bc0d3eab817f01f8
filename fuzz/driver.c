/*
 * driver.c — libFuzzer's entry points for one target, chosen at compile time with
 * -DFUZZ_TARGET=NAME (url, limit, table, sqlite, redis): fuzz_NAME_init once, then
 * fuzz_NAME_one for every input.
 */
#include "fuzz.h"

#define FUZZ_GLUE2(a, b, c) a##b##c
#define FUZZ_GLUE(a, b, c)  FUZZ_GLUE2(a, b, c)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    FUZZ_GLUE(fuzz_, FUZZ_TARGET, _init)();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return FUZZ_GLUE(fuzz_, FUZZ_TARGET, _one)(data, size);
}
