// Version, Status, RuntimeConfig and UpdateRuntimeConfig: what kubelet asks at start-up and
// every few seconds after.
import type { StatusRequest, StatusResponse, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse } from '../../cri-api/messages';
import fsp from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import type { PodBackends } from '../runtime/pod-backend';

export const RUNTIME_NAME = 'podvisor';
// The CRI API version string kubelet checks, not ours.
export const CRI_VERSION = '0.1.0';

export interface NetworkStatus {
  ready(): { ready: boolean; reason: string; message: string };
}

/**
 * The runtime handlers served: those of the config whose backend this daemon has, each with
 * the features its backend really implements.
 */
export function servedHandlers(handlers: Record<string, string>, backends: PodBackends) {
  return Object.entries(handlers).flatMap(([name, kind]) => {
    const b = backends.get(kind);
    return b ? [{ name, features: { recursive_read_only_mounts: b.features.recursiveReadOnlyMounts, user_namespaces: b.features.userNamespaces } }] : [];
  });
}

export function runtimeInfoHandlers(deps: { version: string; root: string; backends: PodBackends; handlers: Record<string, string>; network: NetworkStatus; config: object; cgroupDriver: 'cgroupfs' | 'systemd' }) {
  const runtimeConfigFile = path.join(deps.root, 'runtime-config.json');
  return {
    async Version() {
      return { version: CRI_VERSION, runtime_name: RUNTIME_NAME, runtime_version: deps.version, runtime_api_version: 'v1' };
    },

    async Status(req: StatusRequest): Promise<StatusResponse> {
      // the runtime is ready when the backend of the default handler ("") can run pods
      const main = deps.backends.get(deps.handlers[''] ?? 'vm') ?? deps.backends.all()[0];
      const notReady = main ? await main.readiness() : 'no pod backend';
      const net = deps.network.ready();
      const conditions = [
        { type: 'RuntimeReady', status: !notReady, reason: notReady ? 'VMRuntimeNotReady' : '', message: notReady ?? '' },
        { type: 'NetworkReady', status: net.ready, reason: net.ready ? '' : net.reason, message: net.ready ? '' : net.message },
      ];
      const info: Record<string, string> = {};
      if (req?.verbose) info.config = JSON.stringify(deps.config);
      return {
        status: { conditions },
        info,
        runtime_handlers: servedHandlers(deps.handlers, deps.backends),
        // node-wide: a backend that does not honour Strict refuses such containers (containers.ts)
        features: { supplemental_groups_policy: deps.backends.all().some((b) => b.features.supplementalGroupsPolicy) },
      };
    },

    async UpdateRuntimeConfig(req: UpdateRuntimeConfigRequest): Promise<UpdateRuntimeConfigResponse> {
      const cidr = req?.runtime_config?.network_config?.pod_cidr ?? '';
      await fsp.mkdir(deps.root, { recursive: true });
      await writeFileAtomic(runtimeConfigFile, JSON.stringify({ pod_cidr: cidr }), { fsync: true });
      return {};
    },

    // kubelet takes its cgroup driver from here: the one pod VMs' cgroups are made with
    async RuntimeConfig() {
      return { linux: { cgroup_driver: deps.cgroupDriver === 'systemd' ? 'SYSTEMD' : 'CGROUPFS' } };
    },
  };
}
