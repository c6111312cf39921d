#!/bin/sh
# Installs, upgrades or uninstalls a podvisor release (this script ships at the top of each
# release directory; `make install`/`make uninstall` run it from build/release).
#   ./install.sh [--prefix /usr/local] [--destdir DIR]              install or upgrade
#   ./install.sh --uninstall [--prefix /usr/local] [--destdir DIR]  remove what install put
#   ./install.sh --installed-version [--prefix …]                   print the version in place
# Versions live side by side under PREFIX/lib/podvisor/<version>, `current` points at the one in
# use, so an upgrade never rewrites a file a running daemon has open: the new version is
# copied, `current` flips atomically, and only the previous version is kept (its daemon may
# still be running until the service restarts). Nothing under /etc, /var/lib/podvisor or
# /run/podvisor is written: config stays the operator's, pods and their state stay as they are.
# PREFIX/lib/podvisor/installed lists every file install put outside that tree and every
# directory it had to create, so uninstall removes exactly those (and the tree).
set -eu

prefix=/usr/local destdir= action=install
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --destdir) destdir=$2; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    --installed-version) action=version; shift ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case $prefix in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac
src=$(cd "$(dirname "$0")" && pwd)
root=$destdir$prefix
libdir=$root/lib/podvisor
list=$libdir/installed

# Outside lib/podvisor: these files (relative to the release and to PREFIX).
files="bin/podvisor lib/systemd/system/podvisor.service share/podvisor/config.toml share/podvisor/crictl.yaml share/doc/podvisor/README.md"

installed_version() {
  [ -L "$libdir/current" ] && readlink "$libdir/current" || true
}

# mkdir -p that records each directory it creates (as a path under DESTDIR) in $log.
mkdirs() {
  [ -d "$1" ] && return 0
  mkdirs "$(dirname "$1")"
  mkdir "$1"
  echo "dir ${1#"$destdir"}" >>"$log"
}

do_install() {
  version=$(ls "$src/lib/podvisor" | grep -v '^current$' | head -n1)
  [ -n "$version" ] && [ -x "$src/lib/podvisor/$version/node" ] || { echo "install.sh: no release found beside $0" >&2; exit 1; }
  previous=$(installed_version)
  log=$(mktemp)
  # The directories an earlier install created stay on the list.
  [ -f "$list" ] && grep '^dir ' "$list" >"$log" || true
  mkdirs "$libdir"
  # The version's tree, copied beside the others, then made current in one rename.
  if [ "$previous" != "$version" ] || [ ! -d "$libdir/$version" ]; then
    rm -rf "$libdir/.$version.new"
    cp -a "$src/lib/podvisor/$version" "$libdir/.$version.new"
    rm -rf "$libdir/$version"
    mv "$libdir/.$version.new" "$libdir/$version"
    ln -sfn "$version" "$libdir/.current.new"
    mv -T "$libdir/.current.new" "$libdir/current"
  fi
  # Keep the new version and the one it replaces (its daemon may run until restarted).
  for v in $(ls -A "$libdir"); do
    case $v in current|installed|"$version"|"$previous") ;; *) rm -rf "${libdir:?}/$v" ;; esac
  done
  for f in $files; do
    [ -e "$src/$f" ] || continue
    mkdirs "$(dirname "$root/$f")"
    if [ "$f" = lib/systemd/system/podvisor.service ]; then
      sed "s|/usr/local/|$prefix/|g" "$src/$f" >"$root/$f.new"
    else
      cp "$src/$f" "$root/$f.new"
    fi
    chmod "$(stat -c %a "$src/$f")" "$root/$f.new"
    mv "$root/$f.new" "$root/$f"
    echo "file $prefix/$f" >>"$log"
  done
  sort -u "$log" >"$list.new" && mv "$list.new" "$list"
  rm -f "$log"
  echo "podvisor $version installed in $root${previous:+ (was $previous)}"
}

do_uninstall() {
  [ -f "$list" ] || { echo "install.sh: nothing installed in $root (no $list)" >&2; exit 1; }
  # The list lives in the tree this removes: read it first.
  entries=$(cat "$list")
  echo "$entries" | while read -r kind p; do [ "$kind" = file ] && rm -f "$destdir$p"; done
  rm -rf "$libdir"
  # Directories install created, deepest first, if nothing else lives there now.
  echo "$entries" | awk '$1 == "dir" { print length($2), $2 }' | sort -rn | while read -r _ d; do
    rmdir "$destdir$d" 2>/dev/null || true
  done
  echo "podvisor uninstalled from $root"
}

case $action in
  install) do_install ;;
  uninstall) do_uninstall ;;
  version) installed_version ;;
esac
