// End to end with a real pod VM: QEMU runs in the pod netns, opens the tap by name, the NIC
// takes the CNI MAC; the guest agent's network.configure applies interfaces + routes. From the
// CNI bridge side: ping (v4, v6) reaches the guest kernel, and TCP reaches it (a closed port
// answers RST at once: "connection refused", not a timeout). Skipped when the guest is not built.
// A second test boots the same guest kernel with a tiny busybox initramfs whose /init does what
// network.configure does (from the PodNetwork, passed on the kernel command line) and runs a TCP
// echo server: full TCP both ways to a real VM, independent of the agent's progress.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { leftovers, makeEnv, podRequest, sh, Env } from './helpers';
import { AgentClient } from '../../src/agent/client';
import { silentLogger } from '../../src/util/log';
import { kernelCmdline, QemuHypervisor } from '../../src/vm/qemu';
import type { Vm } from '../../src/vm/hypervisor';
import type { PodNetwork } from '../../network/network-driver';

const GUEST = process.env.PODVISOR_TEST_GUEST_DIR ?? path.join(__dirname, '../../build/guest');
const kernel = path.join(GUEST, 'vmlinux');
const initramfs = path.join(GUEST, 'initramfs.img');
// the agent must know network.configure (its name is a string in the static agent binary)
const haveGuest = fs.existsSync(kernel) && fs.existsSync(initramfs) && fs.readFileSync(initramfs).includes('network.configure');

jest.setTimeout(180_000);

const TCP_PROBE = `
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); print("open")
except ConnectionRefusedError: print("refused")
except OSError as e: print("error", e)
`;

(haveGuest ? test : test.skip)('a QEMU VM on the tap is reachable at the pod IP (ping v4/v6, TCP)', async () => {
  const env: Env = makeEnv('v');
  const vmDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pvnet-vm-'));
  const share = path.join(vmDir, 'share');
  fs.mkdirSync(share);
  const driver = env.driver();
  const req = podRequest();
  let net: PodNetwork | null = null;
  let vm: Vm | undefined;
  let agent: AgentClient | undefined;
  try {
    env.writeConflist();
    net = await driver.setUp(req);
    const hv = new QemuHypervisor({ binary: 'qemu-system-x86_64', kernel, initramfs, kernelArgs: '', accelerator: 'tcg', logger: silentLogger });
    vm = await hv.start({ id: req.sandboxId, dir: vmDir, vcpus: 1, memoryMiB: 256, sharePath: share, network: { netnsPath: net.netnsPath, nics: net.nics } });
    agent = await AgentClient.connect(vm.info.agentSocket, 60_000);
    await agent.call('hello', {
      protocol: 1, nonce: 'n', time_unix_ns: (BigInt(Date.now()) * 1_000_000n).toString(),
      entropy: crypto.randomBytes(64).toString('base64'), hostname: 'pvnet',
    }, 60_000);
    await agent.call('network.configure', { interfaces: net.interfaces, routes: net.routes }, 30_000);
    const inHost = (...a: string[]) => sh('ip', ['netns', 'exec', env.hostNetns, ...a]);
    const [v4, v6] = net.ips;
    expect(inHost('busybox', 'ping', '-c', '3', '-W', '10', v4)).toMatch(/[1-3] packets received/);
    // IPv6: the guest may still be doing DAD for a moment
    let v6ok = false;
    for (let i = 0; i < 10 && !v6ok; i++) {
      try { v6ok = /[1-3] packets received/.test(inHost('busybox', 'ping6', '-c', '1', '-W', '2', v6)); } catch { /* retry */ }
    }
    expect(v6ok).toBe(true);
    expect(inHost('python3', '-c', TCP_PROBE, v4, '9').trim()).toBe('refused');
    expect(inHost('python3', '-c', TCP_PROBE, v6, '9').trim()).toBe('refused');
    expect(inHost('ip', 'neigh', 'show', v4).toLowerCase()).toContain(net.interfaces[0].mac);
  } finally {
    agent?.close();
    await vm?.stop(5000).catch(() => undefined);
    await driver.tearDown(req, net).catch(() => undefined);
    fs.rmSync(vmDir, { recursive: true, force: true });
    expect(leftovers(env, req.sandboxId)).toEqual([]);
    env.cleanup();
  }
});

// --- busybox guest -------------------------------------------------------------------------------

const modRoot = path.join(GUEST, 'initramfs.root/lib/modules');
const haveBusyboxGuest = fs.existsSync(kernel) && fs.existsSync(modRoot) && /statically linked/.test(execFileSync('file', ['-L', '/bin/busybox'], { encoding: 'utf8' }));
const NET_MODULES = ['virtio_ring', 'virtio', 'virtio_mmio', 'failover', 'net_failover', 'virtio_net'];

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod $m 2>/dev/null; done
arg() { tr ' ' '\\n' </proc/cmdline | sed -n "s/^$1=//p"; }
MAC=$(arg pv.mac); MTU=$(arg pv.mtu); NAME=$(arg pv.name)
for i in 1 2 3 4 5 6 7 8 9 10; do
  for d in /sys/class/net/*; do [ "$(cat $d/address)" = "$MAC" ] && DEV=\${d##*/}; done
  [ -n "$DEV" ] && break; sleep 0.2
done
ip link set lo up
ip link set dev $DEV name $NAME mtu $MTU
for a in $(arg pv.addrs | tr , ' '); do ip addr add $a dev $NAME; done
ip link set dev $NAME up
for r in $(arg pv.routes | tr , ' '); do
  dst=\${r%@*}; gw=\${r#*@}
  case $dst in *:*) f=-6;; *) f=-4;; esac
  [ "$dst" = 0.0.0.0/0 -o "$dst" = ::/0 ] && dst=default
  if [ "$gw" = - ]; then ip $f route add $dst dev $NAME; else ip $f route add $dst via $gw dev $NAME; fi
done
(while true; do nc -l -p 8080 -e /bin/cat; done) &
echo PV-GUEST-READY >/dev/ttyS0
while true; do sleep 3600; done
`;

function buildInitramfs(dir: string): string {
  const root = path.join(dir, 'root');
  for (const d of ['bin', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  fs.writeFileSync(path.join(root, 'init'), INIT, { mode: 0o755 });
  const all = execFileSync('find', [modRoot, '-name', '*.ko'], { encoding: 'utf8' }).trim().split('\n');
  const mods: string[] = [];
  for (const m of NET_MODULES) {
    const f = all.find((p) => path.basename(p, '.ko').replace(/-/g, '_') === m);
    if (!f) continue; // built in
    const dst = `/lib/modules/${path.basename(f)}`;
    fs.mkdirSync(path.join(root, 'lib/modules'), { recursive: true });
    fs.copyFileSync(f, path.join(root, dst));
    mods.push(dst);
  }
  fs.writeFileSync(path.join(root, 'modules'), mods.join('\n') + '\n');
  const img = path.join(dir, 'initramfs.cpio');
  execFileSync('sh', ['-c', `cd ${root} && find . -mindepth 1 | cpio --quiet -o -H newc -R 0:0 > ${img}`]);
  return img;
}

(haveBusyboxGuest ? test : test.skip)('a QEMU VM (busybox guest) on the tap: ping and TCP echo at the pod IP, v4 and v6', async () => {
  const env: Env = makeEnv('b');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pvnet-bbvm-'));
  const driver = env.driver();
  const req = podRequest({ portMappings: [{ protocol: 'TCP', container_port: 8080, host_port: 18080 }] });
  let net: PodNetwork | null = null;
  let qemu: ReturnType<typeof spawn> | undefined;
  const consoleLog = path.join(dir, 'console.log');
  try {
    env.writeConflist();
    const initrd = buildInitramfs(dir);
    net = await driver.setUp(req);
    const ifc = net.interfaces[0];
    // the daemon's own kernel command line: under TCG on a loaded host the guest hangs
    // calibrating its TSC without the tsc_early_khz hint it carries
    const cmdline = kernelCmdline([
      `pv.mac=${ifc.mac}`, `pv.mtu=${ifc.mtu}`, `pv.name=${ifc.name}`, `pv.addrs=${ifc.addresses.join(',')}`,
      `pv.routes=${net.routes.map((r) => `${r.dest}@${r.gateway ?? '-'}`).join(',')}`,
    ].join(' '));
    qemu = spawn('ip', ['netns', 'exec', net.netnsName, 'qemu-system-x86_64',
      '-M', 'microvm,x-option-roms=off,rtc=on', '-accel', 'tcg,tb-size=16', '-cpu', 'max', '-m', '256', '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-kernel', kernel, '-initrd', initrd, '-append', cmdline,
      '-serial', `file:${consoleLog}`,
      '-netdev', `tap,id=net0,ifname=${net.nics[0].tap},script=no,downscript=no`,
      '-device', `virtio-net-device,netdev=net0,mac=${net.nics[0].mac}`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    qemu.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    const deadline = Date.now() + 120_000;
    while (!(fs.existsSync(consoleLog) && fs.readFileSync(consoleLog, 'utf8').includes('PV-GUEST-READY'))) {
      if (Date.now() > deadline || qemu.exitCode !== null) {
        const console = fs.existsSync(consoleLog) ? fs.readFileSync(consoleLog, 'utf8').slice(-3000) : 'no console';
        throw new Error(`guest did not come up (exit ${qemu.exitCode}): stderr: ${stderr.slice(-1000)}\nconsole: ${console}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    const inHost = (...a: string[]) => sh('ip', ['netns', 'exec', env.hostNetns, ...a]);
    const [v4, v6] = net.ips;
    expect(inHost('busybox', 'ping', '-c', '2', '-W', '10', v4)).toMatch(/2 packets received/);
    let v6ok = false;
    for (let i = 0; i < 15 && !v6ok; i++) {
      try { v6ok = /1 packets received/.test(inHost('busybox', 'ping6', '-c', '1', '-W', '2', v6)); } catch { /* DAD */ }
    }
    expect(v6ok).toBe(true);
    const echo = (host: string, port: string) => inHost('python3', '-c', `
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
data = b"pod-network-%d " % 7 * 4000
c.sendall(data); got = b""
while len(got) < len(data):
    d = c.recv(65536)
    if not d: break
    got += d
print("ok" if got == data else "mismatch %d" % len(got))`, host, port).trim();
    expect(echo(v4, '8080')).toBe('ok');
    expect(echo(v6, '8080')).toBe('ok');
    expect(echo('10.199.0.1', '18080')).toBe('ok'); // hostPort via portmap DNAT
  } finally {
    if (qemu && qemu.exitCode === null) {
      qemu.kill('SIGKILL');
      await new Promise((r) => qemu!.once('exit', r));
    }
    await driver.tearDown(req, net).catch(() => undefined);
    expect(leftovers(env, req.sandboxId)).toEqual([]);
    fs.rmSync(dir, { recursive: true, force: true });
    env.cleanup();
  }
});
