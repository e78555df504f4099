#!/bin/sh
# A C compiler for scripts/test.sh: gcc as on a machine whose gcc has no LTO plugin (compiling
# with -flto works, linking with it fails as there: "could not run lto-wrapper").
case " $* " in *" -c "*) exec gcc "$@";; esac
case " $* " in *-flto*) echo "/usr/bin/ld: error: could not run lto-wrapper" >&2; exit 1;; esac
exec gcc "$@"
