// Fuzz every CRI RPC through the real gRPC socket of a real daemon (issue 17, "beyond the
// list"). Requests are generated from the proto itself (cri-api/api.proto, walked with
// protobufjs): each field gets random or hostile values for its type (path traversal, NULs,
// 64 KiB strings, control characters, extreme integers, unknown enum numbers, deep and empty
// messages). The daemon's guest kernel is a file that is not a kernel, so a RunPodSandbox that
// gets past validation fails at the VM boot (its clean-up paths run too) and no VM stays up.
// Asserted: every call ends with a gRPC status (never a hang past its deadline, never a lost
// connection), Version answers after every batch, the daemon's peak RSS stays under a bound
// (printed), and nothing named after the fuzz marker exists outside the daemon's directories.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { PROTO_PATH } from '../cri-api';
import { fc, fuzzParams } from '../test/support/fuzz';
import { MiB, measurePeak } from '../test/support/rss';
import { qemuPidsUnder, TestDaemon } from './support/daemon';

jest.setTimeout(600_000);

const MARK = 'pvfuzzmark';
const root = protobuf.loadSync(PROTO_PATH);
const runtimeSvc = root.lookupService('runtime.v1.RuntimeService');
const imageSvc = root.lookupService('runtime.v1.ImageService');

const hostileString = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 24 }) },
  { weight: 1, arbitrary: fc.constantFrom('', '.', '..', '/', '../../../../tmp/' + MARK, '/tmp/' + MARK + '/x', `/etc/${MARK}`, `../${MARK}`, `${MARK}\0/etc/passwd`, `/proc/self/mem`, '/dev/zero', '/dev/shm/' + MARK, `/sys/fs/cgroup/${MARK}`, `kubepods/../../${MARK}`, '%s%n%x', '${PATH}', '\u202e\u0000\uffff', 'a'.repeat(65536), `127.0.0.1:1/${MARK}:latest`, 'sha256:' + '0'.repeat(64), 'sha256:' + 'g'.repeat(64)) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 300 }) },
  { weight: 1, arbitrary: fc.array(fc.constantFrom('..', MARK, '.', '', 'etc', 'proc'), { maxLength: 6 }).map((a) => a.join('/')) },
);
const int64 = fc.oneof(fc.constantFrom('0', '-1', '9223372036854775807', '-9223372036854775808', '18446744073709551615'), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String));
const int32 = fc.oneof(fc.constantFrom(0, -1, 2147483647, -2147483648), fc.integer());

function scalar(type: string): fc.Arbitrary<unknown> | undefined {
  switch (type) {
    case 'string':
      return hostileString;
    case 'bytes':
      return fc.uint8Array({ maxLength: 256 }).map((a) => Buffer.from(a));
    case 'bool':
      return fc.boolean();
    case 'int32':
    case 'sint32':
    case 'sfixed32':
      return int32;
    case 'uint32':
    case 'fixed32':
      return fc.oneof(fc.constantFrom(0, 4294967295), fc.nat());
    case 'int64':
    case 'sint64':
    case 'sfixed64':
      return int64;
    case 'uint64':
    case 'fixed64':
      return fc.oneof(fc.constantFrom('0', '18446744073709551615'), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String));
    case 'double':
    case 'float':
      return fc.double();
  }
  return undefined;
}

const cache = new Map<string, fc.Arbitrary<Record<string, unknown>>>();
/** A request arbitrary for a message type: every field optional, nesting bounded by depth. */
function messageArb(type: protobuf.Type, depth: number): fc.Arbitrary<Record<string, unknown>> {
  const key = `${type.fullName}@${depth}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const fields: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of type.fieldsArray) {
    f.resolve();
    let value: fc.Arbitrary<unknown> | undefined;
    if (f.resolvedType instanceof protobuf.Type) {
      if (depth <= 0) continue;
      value = messageArb(f.resolvedType, depth - 1);
    } else if (f.resolvedType instanceof protobuf.Enum) {
      value = fc.oneof(fc.constantFrom(...Object.values(f.resolvedType.values)), int32);
    } else value = scalar(f.type);
    if (!value) continue;
    if (f.map) {
      value = fc.dictionary(hostileString.filter((k) => k.length < 1000), value as fc.Arbitrary<unknown>, { maxKeys: 4 });
    } else if (f.repeated) value = fc.array(value, { maxLength: 3 });
    fields[f.name] = value;
  }
  const arb = fc.record(fields, { requiredKeys: [] });
  cache.set(key, arb);
  return arb;
}

interface Rpc {
  service: 'runtime' | 'image';
  name: string;
  request: fc.Arbitrary<Record<string, unknown>>;
  streaming: boolean;
}
const rpcs: Rpc[] = [];
for (const [service, svc] of [['runtime', runtimeSvc], ['image', imageSvc]] as const) {
  for (const m of svc.methodsArray) {
    m.resolve();
    rpcs.push({ service, name: m.name, request: messageArb(m.resolvedRequestType!, 3), streaming: !!m.responseStream });
  }
}

let d: TestDaemon;
let fakeKernel: string;
beforeAll(async () => {
  fakeKernel = path.join(fs.mkdtempSync('/tmp/pv-fuzz-kernel-'), 'vmlinux');
  fs.writeFileSync(fakeKernel, 'not a kernel\n');
  d = await TestDaemon.start({ templates: false, vmToml: `kernel = "${fakeKernel}"\nboot_timeout_s = 5\n` });
});
afterAll(async () => {
  await d?.destroy();
  fs.rmSync(path.dirname(fakeKernel), { recursive: true, force: true });
});

function daemonPid(): number {
  const out = execFileSync('pgrep', ['-f', `main\\.js serve .*--socket ${d.socket}`], { encoding: 'utf8' });
  return Number(out.split('\n').filter(Boolean)[0]);
}

/** Every path with the marker in its name, outside the daemon's scratch directory. */
function markerPaths(): string[] {
  const found: string[] = [];
  for (const top of ['/tmp', '/run', '/etc', '/var', '/dev/shm', '/root', '/sys/fs/cgroup']) {
    try {
      const out = execFileSync('find', [top, '-xdev', '-name', `*${MARK}*`, '-not', '-path', `${d.dir}/*`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 60_000 });
      found.push(...out.split('\n').filter(Boolean));
    } catch (e: any) {
      found.push(...String(e.stdout ?? '').split('\n').filter(Boolean)); // find exits 1 on unreadable dirs
    }
  }
  return found;
}

const codes: Record<string, number> = {};
async function call(rpc: Rpc, req: Record<string, unknown>): Promise<void> {
  const client: any = rpc.service === 'runtime' ? (d as any).client('runtime') : (d as any).client('image');
  const deadline = Date.now() + 15_000;
  const code = await new Promise<number>((resolve) => {
    if (rpc.streaming) {
      const stream = client[rpc.name](req, { deadline });
      const t = setTimeout(() => stream.cancel(), 300);
      stream.on('data', () => undefined);
      stream.on('error', (e: grpc.ServiceError) => (clearTimeout(t), resolve(e.code)));
      stream.on('end', () => (clearTimeout(t), resolve(0)));
    } else {
      try {
        client[rpc.name](req, { deadline }, (e: grpc.ServiceError | null) => resolve(e ? e.code : 0));
      } catch {
        resolve(-1); // the client could not encode it: never reached the daemon
      }
    }
  });
  const k = `${rpc.name}:${code === -1 ? 'unencodable' : grpc.status[code]}`;
  codes[k] = (codes[k] ?? 0) + 1;
  // never a hang (the deadline passed) nor a dropped connection
  expect([grpc.status.DEADLINE_EXCEEDED]).not.toContain(code);
  if (code === grpc.status.UNAVAILABLE && !['RunPodSandbox', 'PullImage', 'CreateContainer', 'StartContainer', 'ExecSync', 'Exec', 'Attach', 'PortForward', 'GetContainerEvents'].includes(rpc.name)) {
    throw new Error(`${rpc.name} answered UNAVAILABLE: the daemon may have gone (${JSON.stringify(req).slice(0, 300)})`);
  }
}

test('every CRI RPC with random and hostile fields: answered, daemon alive, RSS bounded, nothing written outside', async () => {
  const pid = daemonPid();
  expect(markerPaths()).toEqual([]);
  const rpcArb = fc.constantFrom(...rpcs).chain((rpc) => fc.tuple(fc.constant(rpc), rpc.request));
  const { growth, peak } = await measurePeak('daemon during CRI fuzz', pid, () =>
    fc.assert(
      fc.asyncProperty(fc.array(rpcArb, { minLength: 1, maxLength: 8 }), async (batch) => {
        await Promise.all(batch.map(([rpc, req]) => call(rpc, req)));
        expect((await d.runtime('Version', {}, 10_000)).version).toBe('0.1.0');
      }),
      fuzzParams('CRI RPCs', 400, 60_000),
    ),
  );
  console.log(`CRI fuzz: ${Object.values(codes).reduce((a, b) => a + b, 0)} calls over ${new Set(Object.keys(codes).map((k) => k.split(':')[0])).size} RPCs; ${JSON.stringify(codes)}`);
  expect(new Set(Object.keys(codes).map((k) => k.split(':')[0])).size).toBeGreaterThan(rpcs.length / 2);
  expect(daemonPid()).toBe(pid);
  expect(growth).toBeLessThan(192 * MiB);
  expect(peak).toBeLessThan(640 * MiB);
  // nothing lingers: no pod (every boot failed), no VM, no marker path outside the daemon's dirs
  expect((await d.runtime('ListPodSandbox', {})).items.filter((p: any) => p.state === 'SANDBOX_READY')).toEqual([]);
  const qemus = () => qemuPidsUnder(d.dir).join('\n');
  for (let i = 0; i < 100 && qemus(); i++) await new Promise((r) => setTimeout(r, 100)); // a failed boot's VM may still be going
  if (qemus()) {
    // what is left, and what the daemon said about it
    const pid = qemus().split('\n')[0];
    const vm = /podvisor-([0-9a-f]+)/.exec(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' '))?.[1] ?? '?';
    const log = fs.readFileSync(path.join(d.dir, 'daemon.log'), 'utf8').split('\n').filter((l) => l.includes(vm.slice(0, 12)));
    console.log(`QEMU ${pid} (vm ${vm}) left; daemon log about it:\n${log.slice(-30).join('\n')}`);
  }
  expect(qemus()).toBe('');
  expect(markerPaths()).toEqual([]);
});
