// A CNI bridge network for one test daemon: Debian's bridge + host-local plugins (and portmap
// when asked) written as the daemon's only conflist, then waited for until Status says
// NetworkReady. Each run claims its own bridge and /24 (support/netpool.ts), so runs in several
// e2e slots never share one.
import fs from 'node:fs';
import path from 'node:path';
import { retry, type TestDaemon } from './daemon';

export interface BridgeOptions {
  /** the CNI network's name (also host-local's lease directory under ipamDir) */
  name: string;
  bridge: string;
  /** the /24's first three octets, e.g. '10.213.0' */
  subnet: string;
  /** hairpin mode on the pod ports, a default route and the portmap plugin (port mappings) */
  routed?: boolean;
}

/** Writes the conflist into the daemon's CNI conf dir, waits for NetworkReady; host-local's lease dir. */
export async function useBridgeNetwork(d: TestDaemon, o: BridgeOptions): Promise<string> {
  const ipamDir = path.join(d.dir, 'ipam');
  const bridge = {
    type: 'bridge', bridge: o.bridge, isGateway: true, ipMasq: false, ...(o.routed ? { hairpinMode: true } : {}),
    ipam: { type: 'host-local', ranges: [[{ subnet: `${o.subnet}.0/24` }]], ...(o.routed ? { routes: [{ dst: '0.0.0.0/0' }] } : {}), dataDir: ipamDir },
  };
  const plugins = o.routed ? [bridge, { type: 'portmap', capabilities: { portMappings: true } }] : [bridge];
  fs.writeFileSync(path.join(d.cniConfDir, `10-${o.name}.conflist`), JSON.stringify({ cniVersion: '1.0.0', name: o.name, plugins }));
  await retry(async () => {
    const s = await d.runtime('Status', {});
    if (!s.status.conditions.find((c: any) => c.type === 'NetworkReady')?.status) throw new Error('network not ready yet');
  });
  return ipamDir;
}
