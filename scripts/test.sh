#!/usr/bin/env bash
# The test command: every CPU test, as CI runs it. Builds in build-test/, build-asan/, build-tsan/.
#   1. unit and integration tests (cmocka) on a normal build
#   2. unit tests under valgrind (memcheck)
#   3. unit tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   4. unit tests under ThreadSanitizer (the 16-thread pool and stats stress tests among them)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

step() { printf '\n==> %s\n' "$*"; }

step "build and run all tests"
meson setup build-test --reconfigure >/dev/null 2>&1 || meson setup build-test >/dev/null
meson compile -C build-test -j "$jobs"
meson test -C build-test --print-errorlogs

step "unit tests under valgrind"
meson test -C build-test --suite unit --setup valgrind --print-errorlogs

step "unit tests under ASan + UBSan"
meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false --reconfigure >/dev/null 2>&1 ||
  meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
meson test -C build-asan --suite unit --print-errorlogs

step "unit tests under TSan"
meson setup build-tsan -Db_sanitize=thread -Db_lundef=false --reconfigure >/dev/null 2>&1 ||
  meson setup build-tsan -Db_sanitize=thread -Db_lundef=false >/dev/null
meson test -C build-tsan --suite unit --print-errorlogs

printf '\nall test suites passed\n'
