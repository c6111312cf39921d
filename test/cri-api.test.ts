// Tests for the CRI v1 API definition (cri-api/api.proto) and its loader.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
// protobufjs is a hard dependency of @grpc/proto-loader; used here for raw encoding.
import * as protobuf from 'protobufjs';
import {
  IMAGE_METHODS,
  LOADER_OPTIONS,
  PROTO_PATH,
  RUNTIME_METHODS,
  STREAMING_METHODS,
  loadCri,
} from '../cri-api';

// ---------------------------------------------------------------------------
// Minimal protobuf wire reader, so the tests check real tag numbers instead of
// trusting the same library that encoded the bytes.
// ---------------------------------------------------------------------------

interface WireField {
  field: number;
  wireType: number;
  varint?: bigint;
  bytes?: Buffer;
}

function readVarint(buf: Buffer, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
}

function parseWire(buf: Buffer): WireField[] {
  const out: WireField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [key, p1] = readVarint(buf, pos);
    pos = p1;
    const field = Number(key >> 3n);
    const wireType = Number(key & 7n);
    if (wireType === 0) {
      const [v, p2] = readVarint(buf, pos);
      pos = p2;
      out.push({ field, wireType, varint: v });
    } else if (wireType === 2) {
      const [len, p2] = readVarint(buf, pos);
      const end = p2 + Number(len);
      out.push({ field, wireType, bytes: buf.subarray(p2, end) });
      pos = end;
    } else if (wireType === 1) {
      out.push({ field, wireType, bytes: buf.subarray(pos, pos + 8) });
      pos += 8;
    } else if (wireType === 5) {
      out.push({ field, wireType, bytes: buf.subarray(pos, pos + 4) });
      pos += 4;
    } else {
      throw new Error(`unexpected wire type ${wireType}`);
    }
  }
  return out;
}

function only(fields: WireField[], n: number): WireField {
  const found = fields.filter((f) => f.field === n);
  if (found.length !== 1) throw new Error(`expected exactly one field ${n}, got ${found.length}`);
  return found[0];
}
const sub = (fields: WireField[], n: number): WireField[] => parseWire(only(fields, n).bytes!);
const str = (fields: WireField[], n: number): string => only(fields, n).bytes!.toString('utf8');
const num = (fields: WireField[], n: number): number => Number(only(fields, n).varint);
const fieldNums = (fields: WireField[]): number[] => [...new Set(fields.map((f) => f.field))].sort((a, b) => a - b);

// ---------------------------------------------------------------------------

// Kubernetes 1.37 CRI v1 (k8s.io/cri-api master, July 2026): 37 RuntimeService + 6 ImageService RPCs.
const EXPECTED_RUNTIME = [
  'Version',
  'RunPodSandbox',
  'StopPodSandbox',
  'RemovePodSandbox',
  'PodSandboxStatus',
  'ListPodSandbox',
  'StreamPodSandboxes',
  'CreateContainer',
  'StartContainer',
  'StopContainer',
  'RemoveContainer',
  'ListContainers',
  'StreamContainers',
  'ContainerStatus',
  'UpdateContainerResources',
  'ReopenContainerLog',
  'ExecSync',
  'Exec',
  'Attach',
  'PortForward',
  'ContainerStats',
  'ListContainerStats',
  'StreamContainerStats',
  'PodSandboxStats',
  'ListPodSandboxStats',
  'StreamPodSandboxStats',
  'UpdateRuntimeConfig',
  'Status',
  'CheckpointContainer',
  'CheckpointPod',
  'RestorePod',
  'GetContainerEvents',
  'ListMetricDescriptors',
  'ListPodSandboxMetrics',
  'StreamPodSandboxMetrics',
  'RuntimeConfig',
  'UpdatePodSandboxResources',
];
const EXPECTED_IMAGE = ['ListImages', 'StreamImages', 'ImageStatus', 'PullImage', 'RemoveImage', 'ImageFsInfo'];
const EXPECTED_STREAMING = [
  'StreamPodSandboxes',
  'StreamContainers',
  'StreamContainerStats',
  'StreamPodSandboxStats',
  'GetContainerEvents',
  'StreamPodSandboxMetrics',
  'StreamImages',
];

describe('cri-api loader', () => {
  test('PROTO_PATH is an absolute path to cri-api/api.proto', () => {
    expect(path.isAbsolute(PROTO_PATH)).toBe(true);
    expect(PROTO_PATH.endsWith(path.join('cri-api', 'api.proto'))).toBe(true);
    expect(fs.existsSync(PROTO_PATH)).toBe(true);
    const text = fs.readFileSync(PROTO_PATH, 'utf8');
    expect(text).toMatch(/^syntax = "proto3";$/m);
    expect(text).toMatch(/^package runtime\.v1;$/m);
    expect(text).not.toMatch(/^\s*import\s/m);
    expect(text).not.toMatch(/gogoproto/);
    expect(text).not.toMatch(/^\s*option\s/m);
  });

  test('LOADER_OPTIONS', () => {
    expect(LOADER_OPTIONS).toEqual({ keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
  });

  test('loads both services and caches the result', () => {
    const cri = loadCri();
    expect(loadCri()).toBe(cri);
    expect(typeof cri.RuntimeServiceClient).toBe('function');
    expect(typeof cri.ImageServiceClient).toBe('function');
    expect(cri.RuntimeServiceClient.service).toBe(cri.runtime);
    expect(cri.ImageServiceClient.service).toBe(cri.image);
    expect(cri.runtime.Version.path).toBe('/runtime.v1.RuntimeService/Version');
    expect(cri.image.PullImage.path).toBe('/runtime.v1.ImageService/PullImage');
  });

  test('RPC names and count (43 in total)', () => {
    expect(RUNTIME_METHODS).toEqual(EXPECTED_RUNTIME);
    expect(IMAGE_METHODS).toEqual(EXPECTED_IMAGE);
    expect(RUNTIME_METHODS.length).toBe(37);
    expect(IMAGE_METHODS.length).toBe(6);
    expect(RUNTIME_METHODS.length + IMAGE_METHODS.length).toBe(43);
  });

  test('server-streaming RPCs', () => {
    expect([...STREAMING_METHODS].sort()).toEqual([...EXPECTED_STREAMING].sort());
    const { runtime, image } = loadCri();
    for (const def of [runtime, image]) {
      for (const [name, m] of Object.entries(def)) {
        expect(m.requestStream).toBe(false); // the CRI has no client-streaming RPCs
        expect(m.responseStream).toBe(STREAMING_METHODS.has(name));
      }
    }
  });
});

describe('cri-api wire format', () => {
  const root = protobuf.loadSync(PROTO_PATH);
  root.resolveAll();
  const T = (name: string) => root.lookupType(`runtime.v1.${name}`);

  test('PodSandboxConfig field numbers', () => {
    const PodSandboxConfig = T('PodSandboxConfig');
    const msg = PodSandboxConfig.fromObject({
      metadata: { name: 'nginx', uid: 'uid-1', namespace: 'default', attempt: 3 },
      hostname: 'nginx-host',
      logDirectory: '/var/log/pods/x',
      dnsConfig: { servers: ['10.0.0.10'], searches: ['svc.cluster.local'], options: ['ndots:5'] },
      portMappings: [{ protocol: 'UDP', containerPort: 53, hostPort: 5353, hostIp: '127.0.0.1' }],
      labels: { app: 'nginx' },
      annotations: { note: 'x' },
      linux: {
        cgroupParent: '/kubepods/pod1',
        securityContext: {
          namespaceOptions: { network: 'NODE', pid: 'CONTAINER', ipc: 'TARGET', targetId: 'c1' },
          runAsGroup: { value: 42 },
          supplementalGroupsPolicy: 'Strict',
          seccomp: { profileType: 'Localhost', localhostRef: '/p.json' },
        },
        sysctls: { 'net.ipv4.ip_forward': '1' },
      },
    });
    const buf = Buffer.from(PodSandboxConfig.encode(msg).finish());
    const top = parseWire(buf);
    expect(fieldNums(top)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);

    const md = sub(top, 1);
    expect(str(md, 1)).toBe('nginx');
    expect(str(md, 2)).toBe('uid-1');
    expect(str(md, 3)).toBe('default');
    expect(num(md, 4)).toBe(3);
    expect(str(top, 2)).toBe('nginx-host');
    expect(str(top, 3)).toBe('/var/log/pods/x');

    const dns = sub(top, 4);
    expect([str(dns, 1), str(dns, 2), str(dns, 3)]).toEqual(['10.0.0.10', 'svc.cluster.local', 'ndots:5']);

    const pm = sub(top, 5);
    expect(num(pm, 1)).toBe(1); // UDP
    expect(num(pm, 2)).toBe(53);
    expect(num(pm, 3)).toBe(5353);
    expect(str(pm, 4)).toBe('127.0.0.1');

    // map<string,string> entries: key = 1, value = 2
    const label = sub(top, 6);
    expect([str(label, 1), str(label, 2)]).toEqual(['app', 'nginx']);
    const ann = sub(top, 7);
    expect([str(ann, 1), str(ann, 2)]).toEqual(['note', 'x']);

    const linux = sub(top, 8);
    expect(str(linux, 1)).toBe('/kubepods/pod1');
    const sysctl = sub(linux, 3);
    expect([str(sysctl, 1), str(sysctl, 2)]).toEqual(['net.ipv4.ip_forward', '1']);
    const sc = sub(linux, 2);
    expect(fieldNums(sc)).toEqual([1, 8, 9, 11]);
    const ns = sub(sc, 1);
    expect(num(ns, 1)).toBe(2); // network = NODE
    expect(num(ns, 2)).toBe(1); // pid = CONTAINER
    expect(num(ns, 3)).toBe(3); // ipc = TARGET
    expect(str(ns, 4)).toBe('c1');
    expect(num(sub(sc, 8), 1)).toBe(42); // run_as_group.value
    expect(num(sc, 11)).toBe(1); // supplemental_groups_policy = Strict
    const seccomp = sub(sc, 9);
    expect(num(seccomp, 1)).toBe(2); // Localhost
    expect(str(seccomp, 2)).toBe('/p.json');

    // And back, with the project's loader conventions.
    const decoded = PodSandboxConfig.toObject(PodSandboxConfig.decode(buf), { enums: String, longs: String });
    expect(decoded.metadata).toEqual({ name: 'nginx', uid: 'uid-1', namespace: 'default', attempt: 3 });
    expect(decoded.linux.securityContext.namespaceOptions).toMatchObject({ network: 'NODE', pid: 'CONTAINER', ipc: 'TARGET' });
  });

  test('ContainerConfig / ImageSpec / Mount high field numbers', () => {
    const ContainerConfig = T('ContainerConfig');
    const msg = ContainerConfig.fromObject({
      metadata: { name: 'c', attempt: 1 },
      image: { image: 'docker.io/library/nginx:latest', userSpecifiedImage: 'nginx', runtimeHandler: 'vm', imageRef: 'sha256:ab' },
      envs: [{ key: 'A', value: Buffer.from('b') }],
      mounts: [
        {
          containerPath: '/data',
          hostPath: '/h',
          propagation: 'PROPAGATION_BIDIRECTIONAL',
          uidMappings: [{ hostId: 1000, containerId: 0, length: 1 }],
          recursiveReadOnly: true,
          imageSubPath: 'sub',
          mountOptions: ['noexec'],
        },
      ],
      logPath: 'c/0.log',
      CDIDevices: [{ name: 'vendor.com/gpu=0' }],
      stopSignal: 'SIGNAL_SIGTERM',
    });
    const top = parseWire(Buffer.from(ContainerConfig.encode(msg).finish()));
    expect(fieldNums(top)).toEqual([1, 2, 6, 7, 11, 17, 18]);
    const image = sub(top, 2);
    expect(fieldNums(image)).toEqual([1, 18, 19, 20]);
    expect(str(image, 18)).toBe('nginx');
    const env = sub(top, 6);
    expect(only(env, 2).wireType).toBe(2); // KeyValue.value is bytes
    const mount = sub(top, 7);
    expect(fieldNums(mount)).toEqual([1, 2, 5, 6, 8, 10, 11]);
    expect(num(mount, 5)).toBe(2);
    expect(str(mount, 10)).toBe('sub');
    expect(str(mount, 11)).toBe('noexec');
    expect(str(sub(top, 17), 1)).toBe('vendor.com/gpu=0');
    expect(num(top, 18)).toBe(23); // SIGNAL_SIGTERM
  });

  test('int64 fields survive as decimal strings through the grpc-js serializers', () => {
    const { runtime } = loadCri();
    const status = runtime.PodSandboxStatus;
    const created = '1700000000123456789'; // > 2^53
    const bytes = status.responseSerialize({
      status: { id: 'p1', state: 'SANDBOX_NOTREADY', created_at: created, network: { ip: '10.1.0.2' } },
      timestamp: '5',
    });
    const top = parseWire(bytes);
    const st = sub(top, 1);
    expect(str(st, 1)).toBe('p1');
    expect(num(st, 3)).toBe(1);
    expect(only(st, 4).varint).toBe(BigInt(created));
    expect(str(sub(st, 5), 1)).toBe('10.1.0.2');
    const back = status.responseDeserialize(bytes) as any;
    expect(back.status.created_at).toBe(created);
    expect(back.status.state).toBe('SANDBOX_NOTREADY');
    expect(back.timestamp).toBe('5');
    // defaults: true fills unset scalars and collections
    expect(back.status.runtime_handler).toBe('');
    expect(back.status.labels).toEqual({});
    expect(back.containers_statuses).toEqual([]);
  });

  test('a few other wire facts', () => {
    const attach = parseWire(Buffer.from(T('AttachRequest').encode(T('AttachRequest').fromObject({ containerId: 'c', stdin: true, tty: true, stdout: true, stderr: true })).finish()));
    expect(fieldNums(attach)).toEqual([1, 2, 3, 4, 5]);
    const exec = T('ExecRequest');
    expect(exec.fields.tty.id).toBe(3);
    expect(exec.fields.stdin.id).toBe(4);
    expect(T('LinuxContainerSecurityContext').fields.supplementalGroupsPolicy.id).toBe(17);
    expect(T('LinuxContainerResources').fields.memorySwapLimitInBytes.id).toBe(10);
    expect(T('ContainerStatus').fields.stopSignal.id).toBe(19);
    expect(T('Image').fields.pinned.id).toBe(8);
    expect(T('StatusResponse').fields.features.id).toBe(4);
    expect(T('RestorePodRequest').fields.containerConfigs.id).toBe(5);
    expect(T('Namespace').fields.options.id).toBe(2);
    expect(T('PsiData').fields.Avg300.type).toBe('double');
    expect(root.lookupEnum('runtime.v1.Signal').values.SIGNAL_SIGRTMAX).toBe(65);
    expect(root.lookupEnum('runtime.v1.CgroupDriver').values).toEqual({ SYSTEMD: 0, CGROUPFS: 1 });
  });
});

describe('cri-api over a real grpc-js unix socket', () => {
  let dir: string;
  let server: grpc.Server;
  let client: grpc.Client & Record<string, any>;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-cri-'));
    const address = `unix://${path.join(dir, 'cri.sock')}`;
    const { runtime, RuntimeServiceClient } = loadCri();
    server = new grpc.Server();
    server.addService(runtime, {
      Version: (call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => {
        cb(null, {
          version: '0.1.0',
          runtime_name: 'podvisor',
          runtime_version: `test-for-${call.request.version}`,
          runtime_api_version: 'v1',
        });
      },
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    client = new RuntimeServiceClient(address, grpc.credentials.createInsecure()) as any;
  });

  afterAll(async () => {
    client?.close();
    if (server) await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('Version', async () => {
    const res = await new Promise<any>((resolve, reject) =>
      client.Version({ version: 'v1' }, (err: grpc.ServiceError | null, r: any) => (err ? reject(err) : resolve(r))),
    );
    expect(res).toEqual({
      version: '0.1.0',
      runtime_name: 'podvisor',
      runtime_version: 'test-for-v1',
      runtime_api_version: 'v1',
    });
  });

  test('unimplemented RPCs answer UNIMPLEMENTED', async () => {
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      client.Status({}, (e: grpc.ServiceError | null) => resolve(e!)),
    );
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
  });
});
