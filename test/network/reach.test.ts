// Reachability through the real plumbing without a VM: the pod's tap is attached (by name,
// from inside the pod netns, like QEMU) by a frame relay whose other end is a tap in a
// "guest" netns configured exactly as the guest agent's network.configure would (CNI MAC,
// addresses, routes). Ping and TCP from the CNI bridge side must reach a server there.
import { ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { makeEnv, podRequest, sh, shQuiet, leftovers, Env } from './helpers';
import type { CniNetwork } from '../../network/cni-network';
import type { PodNetwork } from '../../network/network-driver';

jest.setTimeout(90_000);

const ECHO_SERVER = `
import socket, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", 8080)); s.listen(16)
print("listening", flush=True)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d: return
            c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`;
const CLIENT = `
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection((host, port), timeout=10)
data = bytes(range(256)) * (n // 256)
c.sendall(data); c.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = c.recv(65536)
    if not d: break
    got += d
print("ok" if got == data else "mismatch %d/%d" % (len(got), len(data)))
`;

let env: Env;
let driver: CniNetwork;
const guestNs = `pvt-g-${crypto.randomBytes(3).toString('hex')}`;
const procs: ChildProcess[] = [];

beforeAll(() => {
  env = makeEnv('r');
  env.writeConflist();
  driver = env.driver();
  sh('ip', ['netns', 'add', guestNs]);
});
afterAll(() => {
  for (const p of procs) p.kill('SIGKILL');
  shQuiet('ip', ['netns', 'delete', guestNs]);
  env.cleanup();
});

function start(cmd: string, args: string[], readyWord: string): Promise<ChildProcess> {
  const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  procs.push(p);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    p.stdout!.on('data', (b) => { out += b; if (out.includes(readyWord)) resolve(p); });
    p.stderr!.on('data', (b) => { err += b; });
    p.on('exit', (code) => reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`)));
  });
}

/** What network.configure does in the guest, done to the guest netns's tap. */
function configureGuest(net: PodNetwork, tap: string): void {
  const ip = (...a: string[]) => sh('ip', ['-n', guestNs, ...a]);
  ip('link', 'set', 'lo', 'up');
  for (const ifc of net.interfaces) {
    ip('link', 'set', 'dev', tap, 'address', ifc.mac, 'mtu', String(ifc.mtu), 'name', ifc.name);
    for (const a of ifc.addresses) ip('addr', 'add', a, 'dev', ifc.name);
    ip('link', 'set', 'dev', ifc.name, 'up');
  }
  for (const r of net.routes) {
    const fam = r.dest.includes(':') ? '-6' : '-4';
    const args = [fam, 'route', 'replace', r.dest === '0.0.0.0/0' || r.dest === '::/0' ? 'default' : r.dest];
    if (r.gateway) args.push('via', r.gateway);
    if (r.interface) args.push('dev', r.interface);
    ip(...args);
  }
}

async function waitFor(what: string, fn: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('ping and TCP from the bridge side reach a server behind the tap (v4, v6, portmap)', async () => {
  const req = podRequest({ portMappings: [{ protocol: 'TCP', container_port: 8080, host_port: 18080 }] });
  let net: PodNetwork | null = null;
  try {
    net = await driver.setUp(req);
    const relay = await start('python3', [path.join(__dirname, 'tap-relay.py'), net.netnsPath, net.nics[0].tap, `/run/netns/${guestNs}`, 'gtap'], 'ready');
    configureGuest(net, 'gtap');
    const server = await start('ip', ['netns', 'exec', guestNs, 'python3', '-c', ECHO_SERVER], 'listening');
    const [v4, v6] = net.ips;
    // IPv6 DAD in the "guest" must succeed (hairpinMode reflects its own NS back: the kernel's
    // nonce check ignores the looped-back probe)
    await waitFor('guest IPv6 address to leave tentative', () => !/tentative|dadfailed/.test(sh('ip', ['-n', guestNs, '-6', 'addr', 'show', 'dev', 'eth0', 'scope', 'global'])));
    expect(sh('ip', ['-n', guestNs, '-6', 'addr', 'show', 'dev', 'eth0'])).not.toContain('dadfailed');

    const inHost = (...a: string[]) => sh('ip', ['netns', 'exec', env.hostNetns, ...a]);
    expect(inHost('busybox', 'ping', '-c', '2', '-W', '5', v4)).toMatch(/2 packets received/);
    expect(inHost('busybox', 'ping6', '-c', '2', '-W', '5', v6)).toMatch(/2 packets received/);
    expect(inHost('python3', '-c', CLIENT, v4, '8080', String(1 << 20)).trim()).toBe('ok');
    expect(inHost('python3', '-c', CLIENT, v6, '8080', String(1 << 20)).trim()).toBe('ok');
    // hostPort 18080 on the "host" (the bridge address is local there) → portmap DNAT → pod:8080
    expect(inHost('python3', '-c', CLIENT, '10.199.0.1', '18080', '4096').trim()).toBe('ok');
    // the guest reaches its gateway (egress direction on its own)
    expect(sh('ip', ['netns', 'exec', guestNs, 'busybox', 'ping', '-c', '1', '-W', '5', '10.199.0.1'])).toMatch(/1 packets received/);
    // the pod netns's own eth0 never answers: the neighbour entry the host learnt is the guest's
    // MAC and the only listener is the guest's
    const neigh = inHost('ip', 'neigh', 'show', v4);
    expect(neigh.toLowerCase()).toContain(net.interfaces[0].mac);

    server.kill('SIGKILL');
    relay.stdin!.end();
    await waitFor('relay to exit', () => relay.exitCode !== null);
    // negative control: with nothing on the tap the pod IP is silent (the pod netns's eth0 keeps
    // the address but its stack never sees a frame)
    expect(() => inHost('busybox', 'ping', '-c', '1', '-W', '2', v4)).toThrow();
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await driver.tearDown(req, net);
  }
  expect(leftovers(env, req.sandboxId)).toEqual([]);
});
