#!/bin/sh
# The node installer of podvisor's image (/installer/node-install.sh; scripts/image.js puts it
# there beside the release). The DaemonSet (deploy/daemonset.yaml: host PID and network, the
# node's / at /host) runs it on each labelled node:
#   node-install.sh install [--stay]     install or upgrade the image's release on the node; the
#                                         service is restarted only when the version changed
#   node-install.sh uninstall [--stay]   stop and disable podvisor, remove exactly what install
#                                         put there (the cleanup DaemonSet, deploy/uninstall.yaml)
# --stay: then sleep until SIGTERM, so the DaemonSet's pod stays Running (a finished one would
# be restarted over and over). The release's install.sh does the files (versions side by side,
# `current` flipped atomically, nothing under /etc or /var/lib/podvisor touched); systemctl runs
# in the node's own namespaces through nsenter on PID 1. A restart never touches running pods:
# the unit's KillMode=process leaves the pod VMs and host-pod shims running and the new daemon
# reconnects to them. Overridable for tests: HOST_ROOT (/host), PREFIX (/usr/local),
# HOST_EXEC (the command prefix that runs a command on the node).
set -eu

host=${HOST_ROOT:-/host}
prefix=${PREFIX:-/usr/local}
host_exec=${HOST_EXEC:-nsenter -t 1 -m -u -i -n -p --}
release=$(ls -d /release/podvisor-* 2>/dev/null | head -n1)
[ -n "$release" ] || { echo "node-install: no release in /release" >&2; exit 1; }
version=$(readlink "$release/lib/podvisor/current")
[ -d "$host" ] || { echo "node-install: the node's root is not mounted at $host" >&2; exit 1; }

on_node() {
  echo "node-install: on the node: $*"
  $host_exec "$@"
}

action=${1:-install}
stay=false
[ "${2:-}" = --stay ] && stay=true

case $action in
  install)
    installed=$(sh "$release/install.sh" --installed-version --prefix "$prefix" --destdir "$host")
    if [ "$installed" = "$version" ]; then
      echo "node-install: podvisor $version is already installed: the service is left as it is"
    else
      sh "$release/install.sh" --prefix "$prefix" --destdir "$host"
      on_node systemctl daemon-reload
      on_node systemctl enable podvisor.service
      on_node systemctl restart podvisor.service
      echo "node-install: podvisor $version installed and (re)started${installed:+ (was $installed)}"
    fi
    ;;
  uninstall)
    if [ -z "$(sh "$release/install.sh" --installed-version --prefix "$prefix" --destdir "$host")" ]; then
      echo "node-install: podvisor is not installed under $prefix: nothing to do"
    else
      on_node systemctl disable --now podvisor.service || echo "node-install: podvisor.service could not be stopped; removing its files anyway" >&2
      sh "$release/install.sh" --uninstall --prefix "$prefix" --destdir "$host"
      on_node systemctl daemon-reload
    fi
    ;;
  *)
    echo "node-install: usage: node-install.sh install|uninstall [--stay]" >&2
    exit 2
    ;;
esac

if $stay; then
  trap 'exit 0' TERM INT
  while :; do
    sleep 3600 &
    wait $! || true
  done
fi
