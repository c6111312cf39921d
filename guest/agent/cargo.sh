#!/usr/bin/env bash
# cargo for the agent, as build.sh builds it: a static binary (crt-static) with libseccomp linked
# statically, for the host's x86_64 glibc target. `bash guest/agent/cargo.sh build --release`
# builds it; `bash guest/agent/cargo.sh test --release` runs its unit tests the same way.
set -euo pipefail
cd "$(dirname "$0")"
export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
export RUSTFLAGS='-C target-feature=+crt-static'
exec cargo "$@" --locked --target x86_64-unknown-linux-gnu
