#!/usr/bin/env bash
# Build the podvisor guest: OUTDIR/vmlinux (PVH ELF), OUTDIR/initramfs.img (newc cpio, /init =
# the static agent), OUTDIR/manifest.json; and the host's OUTDIR/podvisor-launch (launcher/).
# Idempotent; downloads are cached under OUTDIR/cache.
#
#   guest/build.sh OUTDIR
#
# Env: PODVISOR_INITRAMFS_COMPRESS=none|gzip (default none: under TCG the kernel's gunzip costs
# more boot time than reading a few extra MiB of RAM).
set -euo pipefail

OUT=${1:?usage: build.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=$OUT/cache
COMPRESS=${PODVISOR_INITRAMFS_COMPRESS:-none}
mkdir -p "$CACHE"

log() { echo "build.sh: $*" >&2; }

# Modules the agent needs (their dependency chains are added automatically). Builtins are skipped.
# Modules loaded at boot (listed in /lib/modules/podvisor.order), dependency chains added
# automatically, builtins skipped. crc32c_generic: libcrc32c/ext4 soft-depend on the "crc32c"
# crypto algorithm, which the kernel would find through modprobe; we load it up front.
BOOT_MODULES=(
  crc32c_generic virtio_mmio virtio_console virtio_rng virtio_scsi sd_mod virtio_blk virtio_net
  erofs overlay 9p 9pnet_virtio virtio_balloon
)
# Modules loaded on first use, by group (/lib/modules/podvisor.late: "group path" lines):
# they are large (ext4 2 MB, xfs 4 MB, nfs 3.4 MB) and loading them costs boot time under TCG.
LATE_GROUPS=(
  "ext4:ext4"
  "xfs:xfs"
  "nfs:sunrpc nfs nfsv3 nfsv4"
  "vfat:vfat nls_cp437 nls_utf8"
)
# Modules the kernel may ask for on a privileged container's behalf (`ip link add … type dummy`,
# nft/iptables-nft rules, a fuse or loop mount): the agent binary is the guest's /sbin/modprobe
# (modprobe.rs) and loads them from /lib/modules/podvisor.modules, resolving the kernel's request
# (a name or an alias such as rtnl-link-dummy, fs-fuse, nft-chain-2-nat) through
# /lib/modules/podvisor.alias. Nothing of this is loaded at boot. The late groups above are in the
# index too (a privileged container may mount an ext4 or xfs image through a loop device).
DEMAND_MODULES=(
  dummy veth bridge br_netfilter vxlan tun macvlan ipvlan
  nf_tables nft_compat nft_chain_nat nft_ct nft_masq nft_nat nft_redir nft_reject_inet nft_fib_inet nft_limit
  ip_tables ip6_tables iptable_filter iptable_nat iptable_mangle iptable_raw
  ip6table_filter ip6table_nat ip6table_mangle ip6table_raw ipt_REJECT ip6t_REJECT
  xt_conntrack xt_MASQUERADE xt_addrtype xt_comment xt_mark xt_multiport xt_nat xt_tcpudp
  xt_statistic xt_REDIRECT xt_state xt_physdev nf_conntrack_netlink
  fuse loop
)
# Tools carried into the guest with their shared libraries (listed in /lib/podvisor.keep, so
# stage 1 keeps them): mke2fs formats blank volumes (disk.mount "format"). ~3 MiB with libc.
KEEP_TOOLS=(/sbin/mke2fs)

# --- 1. kernel package -------------------------------------------------------------------------
resolve_kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
PKG=${PODVISOR_KERNEL_PKG:-$(resolve_kernel_pkg || true)}
if [[ -z "$PKG" ]]; then
  log "apt-cache knows no linux-image-amd64; running apt-get update"
  apt-get update -qq >&2
  PKG=$(resolve_kernel_pkg)
fi
[[ -n "$PKG" ]] || { log "cannot resolve the kernel package"; exit 1; }
KVER=${PKG#linux-image-}

KDIR=$CACHE/$PKG
if [[ ! -f $KDIR/.done ]]; then
  log "downloading $PKG"
  rm -rf "$KDIR" "$CACHE/deb-$PKG"
  mkdir -p "$CACHE/deb-$PKG"
  (cd "$CACHE/deb-$PKG" && apt-get download "$PKG" >&2)
  dpkg-deb -x "$CACHE/deb-$PKG"/*.deb "$KDIR"
  touch "$KDIR/.done"
fi
MODDIR=$KDIR/lib/modules/$KVER
VMLINUZ=$KDIR/boot/vmlinuz-$KVER

# --- 2. vmlinux: the ELF inside the bzImage payload (PVH entry, boots on -M microvm) ------------
if [[ ! -f $OUT/vmlinux || $OUT/vmlinux -ot $VMLINUZ ]]; then
  log "extracting vmlinux from $VMLINUZ"
  python3 - "$VMLINUZ" "$OUT/vmlinux.tmp" <<'PY'
import lzma, struct, sys, gzip, zlib
data = open(sys.argv[1], "rb").read()
if data[0x202:0x206] != b"HdrS":
    sys.exit("not a bzImage")
setup_sects = data[0x1f1] or 4
pm_start = (setup_sects + 1) * 512
# Setup header: payload_offset/payload_length at 0x248, relative to the protected-mode code.
off, length = struct.unpack_from("<II", data, 0x248)
payload = data[pm_start + off: pm_start + off + length]
if payload[:6] == b"\xfd7zXZ\x00":
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elf = d.decompress(payload)
elif payload[:2] == b"\x1f\x8b":
    elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
else:
    sys.exit("unsupported payload compression: %r" % payload[:6])
if elf[:4] != b"\x7fELF":
    sys.exit("payload is not an ELF")
open(sys.argv[2], "wb").write(elf)
PY
  mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
fi

# --- 3. the agent -------------------------------------------------------------------------------
# libcontainer's seccomp support links libseccomp statically (Debian's libseccomp-dev has the .a).
# Device cgroup rules (libcontainer's cgroupsv2_devices) build libbpf from source: libelf and
# zlib headers and static libraries.
SECCOMP_A=/usr/lib/x86_64-linux-gnu/libseccomp.a
BUILD_PKGS=()
[[ -f $SECCOMP_A ]] || BUILD_PKGS+=(libseccomp-dev)
[[ -f /usr/lib/x86_64-linux-gnu/libelf.a ]] || BUILD_PKGS+=(libelf-dev)
[[ -f /usr/lib/x86_64-linux-gnu/libz.a ]] || BUILD_PKGS+=(zlib1g-dev)
command -v make >/dev/null || BUILD_PKGS+=(make)
command -v pkg-config >/dev/null || BUILD_PKGS+=(pkg-config)
if ((${#BUILD_PKGS[@]})); then
  log "installing ${BUILD_PKGS[*]} (static libraries for the agent)"
  apt-get install -y -qq "${BUILD_PKGS[@]}" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "${BUILD_PKGS[@]}" >&2; }
fi
log "building the agent"
bash "$HERE/agent/cargo.sh" build --release >&2
AGENT=$HERE/agent/target/x86_64-unknown-linux-gnu/release/podvisor-agent
AGENT_VERSION=$(grep -m1 '^version' "$HERE/agent/Cargo.toml" | cut -d'"' -f2)
if command -v file >/dev/null && file "$AGENT" | grep -q "dynamically linked"; then
  log "agent is not static"; exit 1
fi

# --- 3b. the host launcher ----------------------------------------------------------------------
# podvisor-launch (launcher/) runs on the host, not in the guest: it opens a pod's taps inside the
# pod netns and execs QEMU in the host netns. Built here so one command builds all the Rust.
log "building podvisor-launch"
(cd "$HERE/../launcher" && cargo build --release --locked >&2)
install -m 0755 "$HERE/../launcher/target/release/podvisor-launch" "$OUT/podvisor-launch.tmp"
mv "$OUT/podvisor-launch.tmp" "$OUT/podvisor-launch"

# --- 4. initramfs tree --------------------------------------------------------------------------
ROOT=$OUT/initramfs.root
rm -rf "$ROOT"
mkdir -p "$ROOT"/{proc,sys,dev,run,tmp,etc,lib/modules,sbin}
install -m 0755 "$AGENT" "$ROOT/init"
mknod -m 600 "$ROOT/dev/console" c 5 1
printf 'root:x:0:0:root:/:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

norm() { echo "${1//-/_}"; }
declare -A MODFILE=() BUILTIN=() DONE=()
while read -r f; do
  b=${f##*/}; b=${b%%.ko*}; MODFILE[$(norm "$b")]=$f
done < <(cd "$MODDIR" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
while read -r f; do
  b=${f##*/}; b=${b%%.ko*}; BUILTIN[$(norm "$b")]=1
done <"$MODDIR/modules.builtin"

ORDER=()
add_module() { # depth-first: dependencies first; appends to ORDER
  local m; m=$(norm "$1")
  [[ -n ${DONE[$m]:-} ]] && return 0
  DONE[$m]=1
  if [[ -n ${BUILTIN[$m]:-} ]]; then return 0; fi
  local f=${MODFILE[$m]:-}
  [[ -n $f ]] || { log "module $m not found"; exit 1; }
  local deps d
  deps=$(modinfo -F depends "$MODDIR/$f" | tr ',' ' ')
  for d in $deps; do add_module "$d"; done
  ORDER+=("$f")
}
install_module() { # copy (decompressed) into the initramfs, print its guest path
  local f=$1 dst
  dst=/lib/modules/$KVER/${f%.xz}; dst=${dst%.zst}
  mkdir -p "$ROOT$(dirname "$dst")"
  case $f in
    *.xz) xz -dc "$MODDIR/$f" >"$ROOT$dst" ;;
    *.zst) zstd -dqc "$MODDIR/$f" >"$ROOT$dst" ;;
    *) cp "$MODDIR/$f" "$ROOT$dst" ;;
  esac
  echo "$dst"
}
for m in "${BOOT_MODULES[@]}"; do add_module "$m"; done
: >"$ROOT/lib/modules/podvisor.order"
declare -A BOOTMOD=()
for f in "${ORDER[@]}"; do
  install_module "$f" >>"$ROOT/lib/modules/podvisor.order"
  b=${f##*/}; BOOTMOD[$(norm "${b%%.ko*}")]=1
done
NBOOT=${#ORDER[@]}
: >"$ROOT/lib/modules/podvisor.late"
for g in "${LATE_GROUPS[@]}"; do
  group=${g%%:*}
  ORDER=()
  for m in ${g#*:}; do add_module "$m"; done
  for f in "${ORDER[@]}"; do echo "$group $(install_module "$f")" >>"$ROOT/lib/modules/podvisor.late"; done
done
# The on-demand index: "name path dep,dep" (deps by name, "-" for none; boot-loaded and builtin
# ones left out), and the kernel's request names: "alias name" from modinfo.
: >"$ROOT/lib/modules/podvisor.modules"
: >"$ROOT/lib/modules/podvisor.alias"
ORDER=()
DONE=()
for m in "${!BOOTMOD[@]}"; do DONE[$m]=1; done
for g in "${LATE_GROUPS[@]}"; do for m in ${g#*:}; do add_module "$m"; done; done
for m in "${DEMAND_MODULES[@]}"; do add_module "$m"; done
modname() { local b=${1##*/}; norm "${b%%.ko*}"; }
for f in "${ORDER[@]}"; do
  deps=()
  for d in $(modinfo -F depends "$MODDIR/$f" | tr ',' ' '); do
    d=$(norm "$d")
    [[ -n ${BUILTIN[$d]:-} || -n ${BOOTMOD[$d]:-} ]] || deps+=("$d")
  done
  dl=$(IFS=,; echo "${deps[*]:-}")
  echo "$(modname "$f") $(install_module "$f") ${dl:--}" >>"$ROOT/lib/modules/podvisor.modules"
  modinfo -F alias "$MODDIR/$f" | awk -v m="$(modname "$f")" 'NF {print $1, m}' >>"$ROOT/lib/modules/podvisor.alias"
done
log "$NBOOT boot modules, $(wc -l <"$ROOT/lib/modules/podvisor.late") in late groups, $(wc -l <"$ROOT/lib/modules/podvisor.modules") on demand ($(cut -d' ' -f2 "$ROOT/lib/modules/podvisor.modules" | sed "s|^|$ROOT|" | xargs du -cb | tail -1 | cut -f1) bytes), $(wc -l <"$ROOT/lib/modules/podvisor.alias") aliases"

: >"$ROOT/lib/podvisor.keep"
for t in "${KEEP_TOOLS[@]}"; do
  [[ -x $t ]] || { log "installing e2fsprogs ($t)"; apt-get install -y -qq e2fsprogs >&2; }
  # the tool, every library ldd resolves, and the dynamic loader
  for f in "$t" $(ldd "$t" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    grep -qxF "$f" "$ROOT/lib/podvisor.keep" && continue
    mkdir -p "$ROOT$(dirname "$f")"
    cp -L "$f" "$ROOT$f"
    echo "$f" >>"$ROOT/lib/podvisor.keep"
  done
done
log "kept tools: $(wc -l <"$ROOT/lib/podvisor.keep") files, $(cat "$ROOT/lib/podvisor.keep" | sed "s|^|$ROOT|" | xargs du -cb | tail -1 | cut -f1) bytes"

# --- 5. cpio (reproducible: fixed mtimes, sorted names) ----------------------------------------
find "$ROOT" -exec touch -h -d @0 {} +
(
  cd "$ROOT"
  find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible
) >"$OUT/initramfs.cpio"
case $COMPRESS in
  none) mv "$OUT/initramfs.cpio" "$OUT/initramfs.img" ;;
  gzip) gzip -n -9 <"$OUT/initramfs.cpio" >"$OUT/initramfs.img"; rm "$OUT/initramfs.cpio" ;;
  *) log "bad PODVISOR_INITRAMFS_COMPRESS=$COMPRESS"; exit 1 ;;
esac

# --- 6. manifest --------------------------------------------------------------------------------
VSHA=$(sha256sum "$OUT/vmlinux" | cut -d' ' -f1)
ISHA=$(sha256sum "$OUT/initramfs.img" | cut -d' ' -f1)
cat >"$OUT/manifest.json" <<EOF
{
  "kernel_version": "$KVER",
  "kernel_package": "$PKG",
  "agent_version": "$AGENT_VERSION",
  "protocol": 1,
  "vmlinux": { "file": "vmlinux", "sha256": "$VSHA" },
  "initramfs": { "file": "initramfs.img", "sha256": "$ISHA", "compression": "$COMPRESS" }
}
EOF
log "done: $OUT/vmlinux $OUT/initramfs.img ($(du -h "$OUT/initramfs.img" | cut -f1))"
