/* test_evict.c — placeholder, being written. */
#include "testutil.h"
int main(void) { return 0; }
