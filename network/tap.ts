// Inside the pod netns: one tap per CNI interface, wired to it with tc ingress + mirred in both
// directions, so the VM's virtio-net NIC (which takes the CNI interface's MAC and addresses)
// sits on the CNI network as if it were the interface itself. The netns-side interface keeps
// its addresses (CNI CHECK/DEL and ipMasq teardown read them) but its own stack never sees a
// packet: every frame arriving on it is redirected to the tap before IP/ARP/ND processing.
// The kernel here has no `matchall` classifier, so the catch-all is `u32 match u8 0 0`.
import { run, runWithInput } from '../src/runtime/exec-file';

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
 * Creates the tap (persistent, single queue, vnet_hdr; podvisor-launch attaches to it by name
 * from inside the netns and hands it to QEMU) or, with `tapsFrom`, moves in the tap of that name
 * that a VM made before its pod (a spare) already holds; brings both up and installs the mirred
 * redirects. Undoes its own work on failure. Batched: one `ip` and one `tc` process for the lot.
 */
export async function setUpTap(ns: string, p: TapPair, tapsFrom?: string): Promise<void> {
  try {
    if (tapsFrom) await run('ip', ['-n', tapsFrom, 'link', 'set', 'dev', p.tap, 'netns', ns]);
    else await run('ip', ['-n', ns, 'tuntap', 'add', 'dev', p.tap, 'mode', 'tap', 'vnet_hdr']);
    // no IPv6 link-local on the tap: the netns stack has nothing to say to the guest
    await runWithInput('ip', ['-n', ns, '-batch', '-'],
      `link set dev ${p.tap} addrgenmode none\nlink set dev ${p.tap} mtu ${p.mtu} up\nlink set dev ${p.iface} up\n`);
    await runWithInput('tc', ['-n', ns, '-batch', '-'], redirect(p.iface, p.tap) + redirect(p.tap, p.iface));
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
