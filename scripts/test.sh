#!/usr/bin/env bash
# The test command: every CPU test, as CI runs it. Builds in build-test/, build-asan/, build-tsan/,
# build-nolto/.
#   0. every shell script parses (bash -n)
#   1. unit and integration tests (cmocka) on a normal build
#   2. unit tests under valgrind (memcheck)
#   3. unit tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   4. unit tests under ThreadSanitizer (the 16-thread pool and stats stress tests among them)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

step() { printf '\n==> %s\n' "$*"; }

step "the GPU scripts parse (they run only on GPU machines)"
for script in scripts/*.sh .ci/run; do bash -n "$script"; done

step "the default build works where gcc has no LTO plugin (it builds without LTO)"
rm -rf build-nolto
CC="$PWD/tests/tools/cc-without-lto-plugin.sh" meson setup build-nolto -Dtests=disabled >/dev/null
grep -q "Checking if \"link-time optimization\" : links: NO" build-nolto/meson-logs/meson-log.txt
meson compile -C build-nolto -j "$jobs" >/dev/null
echo "ok: built without LTO"

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

# One closing line for people and CI: individual cmocka tests over all four runs.
python3 - build-test/meson-logs/testlog.json build-test/meson-logs/testlog-valgrind.json \
  build-asan/meson-logs/testlog.json build-tsan/meson-logs/testlog.json <<'PY'
import json, re, sys
passed = failed = 0
for path in sys.argv[1:]:
    for line in open(path):
        run = json.loads(line)
        out = (run.get("stdout") or "") + (run.get("stderr") or "")
        passed += len(re.findall(r"^\[       OK \] ", out, re.M))
        summary = [int(n) for n in re.findall(r"^\[  FAILED  \] (\d+) test", out, re.M)]
        failed += sum(summary) or (1 if run.get("returncode") else 0)
print(f"gpushim: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
