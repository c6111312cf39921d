#!/usr/bin/env bash
# Installs the Debian packages podvisor and its tests use. Idempotent and quiet when all is there.
set -euo pipefail
pkgs=(
  qemu-system-x86 qemu-utils qemu-block-extra   # pod VMs, hot-plug, Ceph RBD driver
  erofs-utils e2fsprogs                         # read-only image disks
  busybox-static cpio xz-utils kmod             # guest initramfs build
  skopeo docker-registry apache2-utils openssl  # registry tests
  containernetworking-plugins iptables iproute2 # pod networking
  util-linux procps                             # nsenter, unshare, pgrep
  zstd                                          # zstd image layers
  ceph-mon ceph-osd ceph-common librados2 librbd1  # Ceph RBD volumes (tests run a one-node cluster)
  nfs-ganesha nfs-ganesha-vfs rpcbind           # NFS volumes (tests run a server in a netns)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # policy-rc.d: package scripts must not start ceph, ganesha or rpcbind services on this host
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
