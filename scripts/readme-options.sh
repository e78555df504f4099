#!/usr/bin/env bash
# Rewrites the README's table of variables from the options table (a test checks they agree).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
table=$("$build/src/gpushim-options" --markdown)
python3 - "$table" <<'PY'
import re, sys
readme = open("README.md").read()
start = readme.index("| Variable | Accepted | Default | Meaning |")
end = readme.index("\n\n", start)
open("README.md", "w").write(readme[:start] + sys.argv[1] + readme[end:])
PY
