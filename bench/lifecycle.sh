#!/bin/bash
# Pod lifecycle benchmark: podvisor (VM template clones, cold boots, host pods) against containerd+runc
# on this machine, plus the host PSS of idle pods. See bench/README.md.
#   bash bench/lifecycle.sh [--iterations N] [--pods 10,50] [--no-containerd] [--no-cold] [--no-clone] [--no-host]
# Needs root, a compiled daemon (make build → dist/), a guest build (build/guest or
# PODVISOR_GUEST_DIR=<dir with vmlinux and initramfs.img>). Installs Debian's containerd and runc
# with apt when they are missing (unless --no-containerd).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "lifecycle bench: run as root (VMs, netns, containerd)" >&2; exit 1; }
[ -f dist/src/cli/main.js ] || { echo "lifecycle bench: dist/src/cli/main.js missing: run make build" >&2; exit 1; }
[ -x node_modules/.bin/node ] || { echo "lifecycle bench: the pinned node is missing: run npm ci" >&2; exit 1; }
want_ctd=1
for a in "$@"; do [ "$a" = --no-containerd ] && want_ctd=0; done
if [ $want_ctd = 1 ] && ! { command -v containerd && command -v runc; } >/dev/null 2>&1; then
  echo "installing Debian's containerd and runc (apt-get)…" >&2
  # policy-rc.d: the package must not start a system containerd; the bench starts its own.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq containerd runc >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq containerd runc >/dev/null; }
  rm -f /usr/sbin/policy-rc.d; trap - EXIT
fi
# Runs bench/lifecycle.ts with TypeScript's transpiler as the loader (no build step for the bench).
# The pinned Node runs it (node_modules/.bin/node), as it runs the daemon.
exec node_modules/.bin/node -e '
const ts = require("typescript"), fs = require("fs");
require.extensions[".ts"] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, "utf8"),
  { compilerOptions: { module: "commonjs", target: "es2022", esModuleInterop: true }, fileName: f }).outputText, f);
require("./bench/lifecycle.ts");' -- "$@"
