#!/bin/bash
# Step profile of a pod's container path (bench/profile.ts). Needs root, dist/ and a guest build.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node_modules/.bin/node -e '
const ts = require("typescript"), fs = require("fs");
require.extensions[".ts"] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, "utf8"),
  { compilerOptions: { module: "commonjs", target: "es2022", esModuleInterop: true }, fileName: f }).outputText, f);
require("./bench/profile.ts");' -- "$@"
