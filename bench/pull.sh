#!/bin/bash
# Runs bench/pull.ts with TypeScript's transpiler as the loader (no build step needed).
#   bash bench/pull.sh [--runs N]
#   bash bench/pull.sh --profile [options of bench/pull-profile.ts]
set -euo pipefail
cd "$(dirname "$0")/.."
script=./bench/pull.ts
if [ "${1:-}" = --profile ]; then
  script=./bench/pull-profile.ts
  shift
fi
exec node -e '
const ts = require("typescript"), fs = require("fs");
require.extensions[".ts"] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, "utf8"),
  { compilerOptions: { module: "commonjs", target: "es2022", esModuleInterop: true }, fileName: f }).outputText, f);
require(process.argv[1]);' "$script" "$@"
