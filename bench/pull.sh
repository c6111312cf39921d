#!/bin/bash
# Runs bench/pull.ts with TypeScript's transpiler as the loader (no build step needed).
set -euo pipefail
cd "$(dirname "$0")/.."
exec node -e '
const ts = require("typescript"), fs = require("fs");
require.extensions[".ts"] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, "utf8"),
  { compilerOptions: { module: "commonjs", target: "es2022", esModuleInterop: true }, fileName: f }).outputText, f);
require("./bench/pull.ts");' -- "$@"
