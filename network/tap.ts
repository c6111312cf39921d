// Inside the pod netns: one tap per CNI interface, wired to it with tc ingress + mirred in both
// directions, so the VM's virtio-net NIC (which takes the CNI interface's MAC and addresses)
// sits on the CNI network as if it were the interface itself. The netns-side interface keeps
// its addresses (CNI CHECK/DEL and ipMasq teardown read them) but its own stack never sees a
// packet: every frame arriving on it is redirected to the tap before IP/ARP/ND processing.
// The kernel here has no `matchall` classifier, so the catch-all is `u32 match u8 0 0`.
import { run } from '../src/runtime/exec-file';

export interface TapPair {
  /** the CNI interface in the netns, e.g. eth0 */
  iface: string;
  /** the tap, e.g. tap0 */
  tap: string;
  mtu: number;
}

async function redirect(ns: string, from: string, to: string): Promise<void> {
  await run('tc', ['-n', ns, 'qdisc', 'add', 'dev', from, 'ingress']);
  await run('tc', ['-n', ns, 'filter', 'add', 'dev', from, 'parent', 'ffff:', 'protocol', 'all',
    'u32', 'match', 'u8', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', to]);
}

/**
 * Creates the tap (persistent, single queue, vnet_hdr; podvisor-launch attaches to it by name
 * from inside the netns and hands it to QEMU), brings both up and installs the mirred redirects. Undoes its own work on failure.
 */
export async function setUpTap(ns: string, p: TapPair): Promise<void> {
  try {
    await run('ip', ['-n', ns, 'tuntap', 'add', 'dev', p.tap, 'mode', 'tap', 'vnet_hdr']);
    // no IPv6 link-local on the tap: the netns stack has nothing to say to the guest
    await run('ip', ['-n', ns, 'link', 'set', 'dev', p.tap, 'addrgenmode', 'none']);
    await run('ip', ['-n', ns, 'link', 'set', 'dev', p.tap, 'mtu', String(p.mtu), 'up']);
    await run('ip', ['-n', ns, 'link', 'set', 'dev', p.iface, 'up']);
    await redirect(ns, p.iface, p.tap);
    await redirect(ns, p.tap, p.iface);
  } catch (err) {
    await tearDownTap(ns, p).catch(() => undefined);
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
