// Turns a CNI result plus the live state of the pod netns into the PodNetwork the VM needs.
// Addresses, MTU, MAC and routes are read from the netns itself (what the plugin chain really
// configured, e.g. ptp's /32 address and on-link gateway route), so the guest replicates it.
import type { CniResult } from './cni';
import type { PodInterface, PodNetwork, PodRoute } from './network-driver';
import { ipJsonBatch } from './netns';
import type { TapPair } from './tap';

const isV4 = (a: string) => !a.includes(':');
const v4First = (a: string, b: string) => Number(!isV4(a)) - Number(!isV4(b));
/** iproute2 prints `pref` for every IPv6 route (the kernel always sends RTA_PREF) and for no IPv4 one. */
const isV6Route = (r: any) => r.pref !== undefined || String(r.dst).includes(':') || String(r.gateway ?? '').includes(':');

export async function buildPodNetwork(
  netnsName: string, netnsPath: string, result: CniResult, defaultIfName: string,
): Promise<{ net: PodNetwork; taps: TapPair[] }> {
  // sandbox interfaces (index kept: ips[].interface refers to it); a result without interfaces
  // (some IPAM-only chains) means the one CNI_IFNAME interface
  let sandbox = result.interfaces.map((i, idx) => ({ ...i, idx })).filter((i) => i.sandbox);
  if (result.interfaces.length === 0) sandbox = [{ name: defaultIfName, idx: -1 }];
  if (sandbox.length === 0) throw new Error('the CNI result names no interface inside the pod netns');
  // the names go into `ip`/`tc` batch lines: only what a sane interface name holds
  for (const ifc of sandbox) if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(ifc.name)) throw new Error(`the CNI result names an unusable interface ${JSON.stringify(ifc.name)}`);

  // all reads in one process (each costs ~10 ms on a busy node); `ip route` has no family
  // switch inside a batch, so both families come from table all
  const answers = await ipJsonBatch(netnsName, [...sandbox.map((ifc) => `addr show dev ${ifc.name}`), 'route show table all']);
  const links = answers.slice(0, sandbox.length);
  const mainTable = answers[sandbox.length].filter((r: any) => r.table === undefined); // main is not named
  const routes4 = mainTable.filter((r: any) => !isV6Route(r));
  const routes6 = mainTable.filter((r: any) => isV6Route(r));
  const interfaces: PodInterface[] = [];
  const taps: TapPair[] = [];
  for (const [k, ifc] of sandbox.entries()) {
    const [link] = links[k];
    if (!link) throw new Error(`interface ${ifc.name} is not in netns ${netnsName}`);
    let addresses: string[] = (link.addr_info ?? [])
      .filter((a: any) => (a.family === 'inet' || a.family === 'inet6') && a.scope === 'global')
      .map((a: any) => `${a.local}/${a.prefixlen}`);
    if (addresses.length === 0) {
      addresses = result.ips.filter((ip) => ip.interface === ifc.idx || (ip.interface === undefined && k === 0)).map((ip) => ip.address);
    }
    addresses.sort(v4First);
    interfaces.push({ name: ifc.name, mac: String(link.address), mtu: Number(link.mtu) || 1500, addresses });
    taps.push({ iface: ifc.name, tap: `tap${k}`, mtu: Number(link.mtu) || 1500 });
  }

  const names = new Set(interfaces.map((i) => i.name));
  const routes: PodRoute[] = [];
  for (const [fam, table] of [['-4', routes4], ['-6', routes6]] as const) {
    for (const r of table) {
      if (r.protocol === 'kernel' || (r.type && r.type !== 'unicast') || !names.has(r.dev)) continue;
      let dest = String(r.dst);
      if (dest === 'default') dest = fam === '-4' ? '0.0.0.0/0' : '::/0';
      else if (!dest.includes('/')) dest += fam === '-4' ? '/32' : '/128';
      if (dest.startsWith('fe80:') || dest.toLowerCase().startsWith('ff')) continue;
      routes.push({ dest, gateway: r.gateway ?? null, interface: r.dev });
    }
  }
  // on-link routes first (a gateway may depend on one), defaults last
  const rank = (r: PodRoute) => (r.gateway ? 1 : 0) + (r.dest.endsWith('/0') ? 2 : 0);
  routes.sort((a, b) => rank(a) - rank(b));

  const ips = result.ips.map((ip) => ip.address.split('/')[0]);
  if (ips.length === 0) for (const i of interfaces) ips.push(...i.addresses.map((a) => a.split('/')[0]));
  ips.sort(v4First); // stable: keeps the plugin's order within a family

  const net: PodNetwork = {
    netnsName, netnsPath,
    nics: interfaces.map((i, k) => ({ tap: taps[k].tap, mac: i.mac })),
    interfaces, routes, ips,
  };
  const d = result.dns;
  if (d && (d.nameservers?.length || d.search?.length || d.domain)) {
    net.dns = { nameservers: d.nameservers ?? [], search: d.search ?? [], options: d.options ?? [], ...(d.domain ? { domain: d.domain } : {}) };
  }
  return { net, taps };
}
