// What a pod's own settings say, whatever backend runs it: its hostname, its DNS settings as
// CRI gives them, and what CNI is told about it. Both backends set them up in the pod (the VM's agent, a host pod's pinned
// UTS namespace and resolv.conf).
import type { PodSandboxConfig } from '../../cri-api/messages';
import type { PodNetworkRequest } from '../../network/network-driver';
import type { SandboxRecord } from './records';

/** The sandbox's hostname, or one derived from the pod name that the kernel accepts (≤ 63). */
export function podHostname(config: PodSandboxConfig): string {
  if (config.hostname) return config.hostname;
  const name = String(config.metadata?.name ?? 'pod').toLowerCase().replace(/[^a-z0-9-]+/g, '-').slice(0, 63).replace(/^-+|-+$/g, '');
  return name || 'pod';
}

/** The pod's DNS settings as CRI gives them, or null. */
export function podDns(config: PodSandboxConfig): { servers: string[]; searches: string[]; options: string[] } | null {
  const d = config?.dns_config;
  return d ? { servers: d.servers ?? [], searches: d.searches ?? [], options: d.options ?? [] } : null;
}

/** What CNI is told about a pod (both backends run the same network driver). */
export function networkRequest(rec: SandboxRecord): PodNetworkRequest {
  const c = rec.config;
  return {
    sandboxId: rec.id,
    name: c.metadata?.name ?? '',
    namespace: c.metadata?.namespace ?? '',
    uid: c.metadata?.uid ?? '',
    portMappings: c.port_mappings ?? [],
    annotations: c.annotations ?? {},
    dns: podDns(c) ?? undefined,
  };
}
