# Cross-compiling for 64-bit Arm Linux with Debian's cross compiler (gcc-aarch64-linux-gnu) and
# the arm64 multiarch libraries (liburcu-dev:arm64, libsqlite3-dev:arm64, ...): both installed by
# scripts/deps.sh --cross-aarch64. Used by scripts/cross-aarch64.sh:
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
# Test programs run through qemu-user (CMAKE_CROSSCOMPILING_EMULATOR), so ctest works as usual.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)

# Multiarch: the arm64 libraries live in /usr/lib/aarch64-linux-gnu next to the host's, and
# their headers in /usr/include, so there is no sysroot. Keep find_library/find_path/pkg-config
# off the host's (x86-64) directories so a missing arm64 package fails at configure time instead
# of linking an x86-64 library.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

# qemu-user runs the tests. Debian's libc6:arm64 (pulled in by the -dev:arm64 packages) puts
# the arm64 dynamic loader at /lib/ld-linux-aarch64.so.1 and the libraries in their multiarch
# directories, so no -L prefix is needed; QEMU_LD_PREFIX still overrides it.
find_program(TRAFFIC_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${TRAFFIC_QEMU_AARCH64})
