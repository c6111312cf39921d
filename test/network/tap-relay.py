#!/usr/bin/env python3
# Test stand-in for QEMU + virtio-net: attaches to the pod's tap by name from inside the pod
# netns (as QEMU does), creates a tap in a "guest" netns, and copies frames both ways. The
# guest netns's kernel then plays the guest. Exits when stdin closes.
#   tap-relay.py <pod netns path> <pod tap> <guest netns path> <guest tap>
import ctypes, fcntl, os, select, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000

def setns(path):
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns " + path)
    os.close(fd)

def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd

pod_ns, pod_tap, guest_ns, guest_tap = sys.argv[1:5]
setns(pod_ns)
a = open_tap(pod_tap)
setns(guest_ns)
b = open_tap(guest_tap)
print("ready", flush=True)
peer = {a: b, b: a}
stdin = sys.stdin.fileno()
while True:
    r, _, _ = select.select([a, b, stdin], [], [])
    for fd in r:
        if fd == stdin:
            if not os.read(stdin, 4096):
                sys.exit(0)
            continue
        try:
            os.write(peer[fd], os.read(fd, 65536))
        except OSError:
            pass  # e.g. the other side is down: drop the frame like a wire would
