// Inside the pod netns: one tap per CNI interface, wired to it with tc ingress + mirred in both
// directions, so the VM's virtio-net NIC (which takes the CNI interface's MAC and addresses)
// sits on the CNI network as if it were the interface itself. The netns-side interface keeps
// its addresses (CNI CHECK/DEL and ipMasq teardown read them) but its own stack never sees a
// packet: every frame arriving on it is redirected to the tap before IP/ARP/ND processing.
// The kernel here has no `matchall` classifier, so the catch-all is `u32 match u8 0 0`.
import { run, runWithInput } from '../src/util/exec-file';

export interface TapPair {
  /** the CNI interface in the netns, e.g. eth0 */
  iface: string;
  /** the tap, e.g. tap0 */
  tap: string;
  mtu: number;
}

/** tc ingress + mirred from one device to the other, as `tc -batch` lines. */
function redirect(from: string, to: string): string {
  return `qdisc add dev ${from} ingress\n` +
    `filter add dev ${from} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${to}\n`;
}

/**
 * Wires each tap to its CNI interface: creates the taps not in `existing` (persistent, single
 * queue, vnet_hdr; podvisor-launch attaches to them by name from inside the netns and hands them
 * to QEMU), brings taps, interfaces and lo up, and installs the mirred redirects both ways.
 * One `ip -batch` and one `tc -batch` (side by side when the taps already exist): on a busy
 * 2-core node every process costs ~10 ms. Undoes its own work on failure.
 */
export async function setUpTaps(ns: string, pairs: TapPair[], existing: string[] = []): Promise<void> {
  const create = pairs.filter((p) => !existing.includes(p.tap));
  const ip = [
    ...create.map((p) => `tuntap add dev ${p.tap} mode tap vnet_hdr`),
    'link set dev lo up',
    // no IPv6 link-local on a tap: the netns stack has nothing to say to the guest
    ...pairs.flatMap((p) => [`link set dev ${p.tap} addrgenmode none`, `link set dev ${p.tap} mtu ${p.mtu} up`, `link set dev ${p.iface} up`]),
  ].join('\n') + '\n';
  const tc = pairs.map((p) => redirect(p.iface, p.tap) + redirect(p.tap, p.iface)).join('');
  const runIp = () => runWithInput('ip', ['-n', ns, '-batch', '-'], ip);
  const runTc = () => runWithInput('tc', ['-n', ns, '-batch', '-'], tc);
  try {
    if (create.length) {
      await runIp();
      await runTc();
    } else {
      await Promise.all([runIp(), runTc()]);
    }
  } catch (err) {
    for (const p of pairs) await tearDownTap(ns, p).catch(() => undefined);
    throw err;
  }
}

/** Removes the redirects and the tap. Missing pieces are fine. */
export async function tearDownTap(ns: string, p: Pick<TapPair, 'iface' | 'tap'>): Promise<void> {
  const quiet = (args: string[]) => run(args[0], args.slice(1)).catch(() => undefined);
  await quiet(['tc', '-n', ns, 'qdisc', 'del', 'dev', p.iface, 'ingress']);
  await quiet(['tc', '-n', ns, 'qdisc', 'del', 'dev', p.tap, 'ingress']);
  await quiet(['ip', '-n', ns, 'link', 'del', 'dev', p.tap]);
}
