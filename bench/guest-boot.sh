#!/usr/bin/env bash
# Guest boot time, focused: cold-boots the guest builds given (directories holding vmlinux and
# initramfs.img) in turn, N rounds, with the daemon's QEMU command line and device layout (TCG),
# and prints per build the medians of
#   - serving: the guest's uptime when the agent opens its port (from the agent's console line),
#   - stage2:  the guest's uptime when the agent starts again on the tmpfs root (after stage 1:
#              boot modules, copying what it keeps, leaving the initramfs),
#   - wall:    QEMU spawn → that console line, host time.
# Builds are interleaved round by round, so machine load hits them alike. Boots VMs: run it under
# the e2e lock (flock /tmp/pv-e2e.lock bash bench/guest-boot.sh …).
# --icount: QEMU counts instructions for the guest clock (-icount shift=0,sleep=off: 1 ns each,
# idle time skipped), so serving/stage2 measure the work the boot does, whatever the host's load
# (TCG is slower this way; wall_s then means little).
#   bash bench/guest-boot.sh [-n ROUNDS] [--icount] DIR [DIR…]
set -euo pipefail
rounds=5
icount=()
while [[ ${1:-} == -* ]]; do
  case $1 in
    -n) rounds=$2; shift 2 ;;
    --icount) icount=(-icount shift=0,sleep=off); shift ;;
    *) echo "guest-boot: unknown option $1" >&2; exit 2 ;;
  esac
done
(($#)) || { echo "usage: guest-boot.sh [-n ROUNDS] [--icount] GUEST_DIR [GUEST_DIR…]" >&2; exit 2; }
khz=$(awk -F: '/cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
work=$(mktemp -d /tmp/pv-boot-XXXX)
qpid=
cleanup() {
  [[ -n $qpid ]] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

boot_once() { # dir → "serving stage2 wall" (seconds)
  local dir=$1 run=$work/run
  rm -rf "$run"; mkdir -p "$run/share"
  local t0; t0=$(date +%s.%N)
  qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -accel tcg,tb-size=24 "${icount[@]}" -cpu max -m 256M -smp 1 \
    -nodefaults -no-user-config -nographic -no-reboot \
    -kernel "$dir/vmlinux" -initrd "$dir/initramfs.img" \
    -append "console=ttyS0 quiet panic=-1 nokaslr mitigations=off no_timer_check tsc=reliable reboot=t tsc_early_khz=$khz" \
    -chardev "file,id=console,path=$run/console.log" -serial chardev:console \
    -device virtio-serial-device -chardev "socket,id=agent,path=$run/agent.sock,server=on,wait=off" \
    -device virtserialport,chardev=agent,name=podvisor.agent \
    -device virtio-scsi-device,id=scsi0 -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0 \
    -fsdev "local,id=share,path=$run/share,security_model=passthrough,multidevs=remap" \
    -device virtio-9p-device,fsdev=share,mount_tag=podshare &
  qpid=$!
  local deadline=$((SECONDS + 120))
  until grep -q 'serving on' "$run/console.log" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "guest-boot: $dir did not serve within 120 s" >&2; cat "$run/console.log" >&2; exit 1; }
    sleep 0.01
  done
  local t1; t1=$(date +%s.%N)
  kill "$qpid"; wait "$qpid" 2>/dev/null || true; qpid=
  local serving stage2
  serving=$(sed -n 's/.*podvisor-agent\[\([0-9.]*\)\]: serving on.*/\1/p' "$run/console.log" | head -1)
  stage2=$(sed -n 's/.*podvisor-agent\[\([0-9.]*\)\]: agent .* starting.*/\1/p' "$run/console.log" | head -1)
  echo "$serving $stage2 $(echo "$t1 - $t0" | bc)"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for ((r = 1; r <= rounds; r++)); do
  for dir in "$@"; do
    echo "$(boot_once "$dir")" >>"$work/$(echo "$dir" | md5sum | cut -c1-8)"
    echo "round $r $dir: $(tail -1 "$work/$(echo "$dir" | md5sum | cut -c1-8)")" >&2
  done
done
# min: the least disturbed boot (machine load only ever adds time)
printf '%-40s %12s %12s %12s %s\n' build "serving_s" "stage2_s" "wall_s" "initramfs"
printf '%-40s %12s %12s %12s\n' "" "median/min" "median/min" "median/min"
for dir in "$@"; do
  f=$work/$(echo "$dir" | md5sum | cut -c1-8)
  col() { printf '%s/%s' "$(cut -d' ' -f"$1" "$f" | median)" "$(cut -d' ' -f"$1" "$f" | sort -n | head -1)"; }
  printf '%-40s %12s %12s %12s %s\n' "$dir" "$(col 1)" "$(col 2)" "$(col 3 | sed 's/\([0-9]*\.[0-9][0-9]\)[0-9]*/\1/g')" \
    "$(stat -c %s "$dir/initramfs.img") bytes"
done
