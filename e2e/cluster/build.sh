#!/usr/bin/env bash
# Builds the cluster e2e's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl, agnhost, and our csi-registrar) from the Go module proxy, once per go.sum: the
# result lives in a cache directory OUTSIDE the repository, keyed by a hash of what goes into
# the build, so every later run (and every worktree) reuses it. A cold build takes ~8-9 min on
# 2 cores; it runs under `nice` so the machine stays usable. Prints the bin directory.
#
# usage: build.sh            cache root: $PODVISOR_CLUSTER_CACHE (default /var/cache/podvisor-cluster)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/k8s
cache=${PODVISOR_CLUSTER_CACHE:-/var/cache/podvisor-cluster}
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build.sh: go is not installed (Kubernetes 1.37 needs Go >= 1.26)" >&2; exit 1; }

# The key: the module's files (go.mod, go.sum, our small mains), this script and the Go toolchain.
key=$( (cd "$src" && cat go.mod go.sum $(find . -name '*.go' | sort) "$here/build.sh"; go version) | sha256sum | cut -c1-16)
out=$cache/$key
if [ -f "$out/ok" ]; then echo "$out/bin"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9                                    # two suites on one machine build once
if [ -f "$out/ok" ]; then echo "$out/bin"; exit 0; fi

k8sver=$(sed -n 's/^\tk8s.io\/kubernetes \(v[0-9.]*\).*/\1/p' "$src/go.mod")
minor=$(echo "$k8sver" | cut -d. -f2)
ld="-s -w -X k8s.io/component-base/version.gitVersion=$k8sver \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean"
tmp=$(mktemp -d "$cache/build.XXXX")
trap 'rm -rf "$tmp"' EXIT
echo "build.sh: building Kubernetes $k8sver and etcd into $out (cold: ~8-9 min on 2 cores)" >&2
start=$(date +%s)
cd "$src"
export CGO_ENABLED=0
nice -n 10 go build -trimpath -ldflags "$ld" -o "$tmp/bin/" \
  ./etcd ./csi-registrar \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/test/images/agnhost >&2
echo "$k8sver" >"$tmp/version"
touch "$tmp/ok"
rm -rf "$out"; mv "$tmp" "$out"
# Older builds (another go.sum) are dropped once this one is in place: each holds ~550 MB.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
echo "build.sh: built in $(($(date +%s) - start)) s" >&2
echo "$out/bin"
