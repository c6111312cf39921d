// The seam between the runtime and pod networking. The runtime calls setUp in RunPodSandbox
// (before QEMU starts: podvisor-launch opens `nics[].tap` inside `netnsPath` for QEMU), hands
// `interfaces` + `routes` to the guest agent (`network.configure`), and calls tearDown in
// StopPodSandbox/RemovePodSandbox (idempotent). See network/README.md.

/** What the runtime knows about the pod when it asks for its network. */
export interface PodNetworkRequest {
  sandboxId: string;
  name: string;
  namespace: string;
  uid: string;
  /** CRI PortMapping objects, snake_case: protocol ('TCP'|'UDP'|'SCTP'), container_port, host_port, host_ip */
  portMappings: any[];
  annotations: Record<string, string>;
  dns?: { servers: string[]; searches: string[]; options: string[] };
}

/** One interface as the guest must configure it (`network.configure` params). */
export interface PodInterface {
  name: string;
  mac: string;
  mtu: number;
  /** CIDR form, IPv4 first */
  addresses: string[];
}

export interface PodRoute {
  /** CIDR form; 0.0.0.0/0 and ::/0 for defaults */
  dest: string;
  gateway: string | null;
  interface: string | null;
}

export interface PodNetwork {
  netnsName: string;
  netnsPath: string;
  /** one per guest NIC: QEMU `-netdev tap,fd=N` (the tap opened by podvisor-launch) + `virtio-net-device,mac=<mac>` */
  nics: Array<{ tap: string; mac: string }>;
  interfaces: PodInterface[];
  routes: PodRoute[];
  /** pod IPs without prefix length: primary first, IPv4 first */
  ips: string[];
  /** DNS settings from the CNI result, if the plugins returned any */
  dns?: { nameservers: string[]; domain?: string; search: string[]; options: string[] };
}

export interface SetUpOptions {
  /**
   * A network namespace the caller made and keeps (a host pod's pinned one): CNI runs into it,
   * no tap is made (the pod's processes sit in it themselves) and tearDown leaves it in place.
   */
  netns?: string;
  /**
   * A VM started before its pod (a spare) waits with its taps open in a netns of its own: that
   * netns becomes the pod netns (renamed; CNI runs into it) and its taps are wired instead of new
   * ones being made.
   */
  adopt?: { netns: string; taps: string[] };
  /**
   * Work that needs only the pod's addresses (the guest's network.configure), run while the taps
   * are wired; set-up fails if it fails.
   */
  whileWiring?: (net: PodNetwork) => Promise<void>;
}

export interface NetworkReadiness {
  ready: boolean;
  reason: string;
  message: string;
}

export interface NetworkDriver {
  /** For the CRI Status NetworkReady condition. */
  ready(): NetworkReadiness;
  setUp(req: PodNetworkRequest, opts?: SetUpOptions): Promise<PodNetwork>;
  /** Idempotent; `net` may be null (e.g. after a daemon restart or a failed setUp). */
  tearDown(req: PodNetworkRequest, net: PodNetwork | null): Promise<void>;
  close(): void;
}

/** The netns name for a sandbox: `pv-<first 16 chars of the id>`. */
export function netnsNameFor(sandboxId: string): string {
  return `pv-${sandboxId.slice(0, 16)}`;
}
