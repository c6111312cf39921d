#!/usr/bin/env bash
# Installs the Debian packages podvisor needs, split by who needs them:
#   install-deps.sh serve   what the daemon and the guest build need (`make serve`)
#   install-deps.sh test    that plus the servers and tools the tests run (`make test`)
#   install-deps.sh --list serve|test   prints the package list and installs nothing
# Idempotent and quiet when all is there. Nothing it installs is started (a policy-rc.d that
# denies every start is in place during apt) or left enabled: units and init scripts of the
# packages it newly installs are disabled afterwards, so e.g. containernetworking-plugins'
# cni-dhcp socket or ceph-common's rbdmap do not come up at the next boot. The tests start the
# servers they need (Ceph, nfs-ganesha, rpcbind, the registry) themselves, in their own
# directories and network namespaces. Packages that were already installed are left as the
# operator set them.
set -euo pipefail

serve_pkgs=(
  qemu-system-x86 qemu-utils qemu-block-extra   # pod VMs, hot-plug, Ceph RBD driver (librbd)
  erofs-utils e2fsprogs                         # read-only image disks, volume filesystems
  busybox-static cpio xz-utils kmod             # guest initramfs build
  containernetworking-plugins iptables iproute2 # pod networking
  util-linux procps                             # nsenter, unshare, pgrep
  zstd                                          # zstd image layers
  librados2 librbd1                             # CSI controller: RBD images through koffi
)
test_pkgs=(
  skopeo docker-registry apache2-utils openssl  # registry tests (a local registry, htpasswd, TLS)
  ceph-mon ceph-osd ceph-common                 # Ceph RBD volumes (tests run a one-node cluster)
  nfs-ganesha nfs-ganesha-vfs rpcbind           # NFS volumes (tests run a server in a netns)
)

# disable_units PKG...: removes the enablement (systemd unit links, sysv rc links) that the
# packages' maintainer scripts made, the way dpkg's own helper would, so a package upgrade keeps
# them disabled (deb-systemd-helper's state stays, its links go). DPKG_ROOT (as dpkg's) lets a
# test act on the units under a directory instead of / (the packages' file lists still come from
# this host's dpkg database).
disable_units() {
  local p u name
  for p in "$@"; do
    while read -r u; do
      name=${u##*/}
      DPKG_MAINTSCRIPT_PACKAGE=$p deb-systemd-helper disable "$name" >/dev/null 2>&1 || true
    done < <(env -u DPKG_ROOT dpkg-query -L "$p" 2>/dev/null | grep -E '^/(usr/)?lib/systemd/system/[^/@]+\.(service|socket|timer|path|target)$' || true)
    if [[ -z ${DPKG_ROOT:-} ]]; then
      while read -r u; do
        update-rc.d "${u##*/}" disable >/dev/null 2>&1 || true
      done < <(dpkg-query -L "$p" 2>/dev/null | grep -E '^/etc/init\.d/[^/]+$' || true)
    fi
  done
}

list=0
if [[ ${1:-} == --list ]]; then list=1; shift; fi
profile=${1:-serve}
case $profile in
  serve) pkgs=("${serve_pkgs[@]}") ;;
  test) pkgs=("${serve_pkgs[@]}" "${test_pkgs[@]}") ;;
  disable-units) shift; disable_units "$@"; exit 0 ;;  # for the tests of this script
  *) echo "install-deps: unknown profile '$profile' (serve or test)" >&2; exit 2 ;;
esac
if ((list)); then printf '%s\n' "${pkgs[@]}"; exit 0; fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]})) || exit 0

echo "installing: ${missing[*]}"
before=$(mktemp); dpkg-query -W -f='${Package}\n' | sort >"$before"
# policy-rc.d: package scripts must not start any service on this host. One already there
# (the operator's) is set aside and put back.
saved=
if [[ -e /usr/sbin/policy-rc.d ]]; then saved=/usr/sbin/policy-rc.d.podvisor-saved; mv /usr/sbin/policy-rc.d "$saved"; fi
restore() { rm -f /usr/sbin/policy-rc.d; [[ -z $saved ]] || mv "$saved" /usr/sbin/policy-rc.d; rm -f "$before"; }
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Every package this run brought in (also dependencies): none keeps a unit enabled.
mapfile -t added < <(dpkg-query -W -f='${Package}\n' | sort | comm -13 "$before" -)
disable_units "${added[@]}"
