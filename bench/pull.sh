#!/bin/bash
# Builds the project (tsc) and runs the compiled bench/pull.js, i.e. the image service as the
# daemon runs it (dist/, no TypeScript compiler in the heap: loading it made every full
# collection of the main isolate mark ~30 MB more, ~2 of them per pull).
#   bash bench/pull.sh [--runs N]
#   bash bench/pull.sh --profile [options of bench/pull-profile.ts]
set -euo pipefail
cd "$(dirname "$0")/.."
script=dist/bench/pull.js
if [ "${1:-}" = --profile ]; then
  script=dist/bench/pull-profile.js
  shift
fi
# The pinned Node (node_modules/.bin/node) compiles and runs it, as it runs the daemon.
node_modules/.bin/node node_modules/typescript/bin/tsc -p tsconfig.json
exec node_modules/.bin/node "$script" "$@"
