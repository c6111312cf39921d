#!/usr/bin/env bash
# Runs the whole suite (unit + e2e with real VMs) and ends with a plain "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp /tmp/podvisor-jest-XXXX.json)
npx jest --ci --runInBand --forceExit --json --outputFile="$out" "$@"
rc=$?
node -e '
  const r = require(process.argv[1]);
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
  if (r.numTotalTests === 0) process.exit(1);
' "$out" || rc=1
rm -f "$out"
exit $rc
