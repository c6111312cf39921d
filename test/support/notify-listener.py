#!/usr/bin/env python3
# A service manager's end of NOTIFY_SOCKET, for tests: binds a unix datagram socket, prints each
# notification as a JSON line {"t": seconds, "msg": "...", "socket_listening": bool}. When the
# message says READY=1 it connects right away (before the daemon can do more than a little work)
# to the CRI socket its STATUS names ("serving CRI on <path>"), so the test learns whether the
# socket was listening when READY=1 was sent (the test checks the path is the daemon's).
import json, re, socket, sys, time

path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print(json.dumps({"bound": path}), flush=True)
while True:
    data = s.recv(4096)
    msg = data.decode("utf-8", "replace")
    rec = {"t": time.time(), "msg": msg}
    if "READY=1" in msg.split("\n"):
        m = re.search(r"serving CRI on (\S+)", msg)
        cri = m.group(1) if m else ""
        rec["cri"] = cri
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect(cri)
            rec["socket_listening"] = True
        except OSError as e:
            rec["socket_listening"] = False
            rec["error"] = str(e)
        finally:
            c.close()
    print(json.dumps(rec), flush=True)
