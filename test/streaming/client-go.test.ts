// podvisor's streaming server against Kubernetes' own client: k8s.io/client-go's remotecommand
// (SPDY/3.1 through moby/spdystream, and WebSocket v5 through gorilla/websocket) and
// portforward (SPDY), built from test/streaming/go-client, the way kubelet's clients and kubectl
// drive exec, attach and port-forward. Host processes and ports stand in for pods here;
// e2e/streaming.test.ts runs the same client against pod VMs.
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { startServer } from './support/harness';
import { k8sStreamBinary, runK8sStream, startK8sStreamPortForward } from './support/go-client';

jest.setTimeout(600_000);

let ctx: Awaited<ReturnType<typeof startServer>>;
beforeAll(async () => {
  k8sStreamBinary(); // the first build takes a while (Go module proxy + compile)
  ctx = await startServer();
});
afterAll(() => ctx?.stop());

const exec = (cmd: string[], o: { stdin?: boolean; stderr?: boolean; tty?: boolean } = {}) =>
  ctx.server.getExec({ container_id: 'c1', cmd, stdout: true, stdin: !!o.stdin, stderr: !!o.stderr, tty: !!o.tty }).url;

describe.each(['spdy', 'websocket'])('client-go remotecommand over %s', (transport) => {
  const t = ['-transport', transport];

  test('exec: stdout, stderr, exit code 0', async () => {
    const r = await runK8sStream('exec', exec(['sh', '-c', 'echo out; echo err >&2'], { stderr: true }), [...t, '-stderr']);
    expect(r).toEqual({ stdout: 'out\n', stderr: 'err\n', exitCode: 0 });
  });

  test('exec: a non-zero exit is a CodeExitError with the code', async () => {
    const r = await runK8sStream('exec', exec(['sh', '-c', 'echo bye; exit 7']), t);
    expect(r.stdout).toBe('bye\n');
    expect(r.exitCode).toBe(7);
  });

  test('exec with stdin: 1 MiB of binary through sha256sum, EOF when the client closes stdin', async () => {
    const data = randomBytes(1 << 20);
    const r = await runK8sStream('exec', exec(['sha256sum'], { stdin: true }), [...t, '-stdin'], data);
    expect(r.stdout.split(' ')[0]).toBe(createHash('sha256').update(data).digest('hex'));
    expect(r.exitCode).toBe(0);
  });

  test('exec with a tty: output through the terminal, the size client-go sends reaches the backend', async () => {
    ctx.backend.resizes.length = 0;
    const r = await runK8sStream('exec', exec(['sh', '-c', 'sleep 0.5; tty'], { tty: true, stdin: true }), [...t, '-tty', '-stdin', '-resize', '101x33'], undefined, { keepStdinOpenMs: 3000 });
    expect(r.stdout).toMatch(/^\/dev\/pts\/\d+\r\n$/); // a terminal's line ending
    expect(r.exitCode).toBe(0);
    expect(ctx.backend.resizes).toContainEqual({ width: 101, height: 33 });
  });

  test('attach with stdin: a line written comes back', async () => {
    const url = ctx.server.getAttach({ container_id: 'c1', stdin: true, stdout: true }).url;
    const r = await runK8sStream('attach', url, [...t, '-stdin'], `hello ${transport}\n`, { keepStdinOpenMs: 1500 });
    expect(r.stdout).toContain(`hello ${transport}\n`);
  });
});

test('client-go portforward (SPDY): two connections through one session, in both directions', async () => {
  const server = net.createServer((s) => s.on('data', (d) => s.write(`echo:${d}`)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const pf = await startK8sStreamPortForward(ctx.server.getPortForward({ pod_sandbox_id: 'pod1', port: [port] }).url, port);
  const talk = (msg: string) =>
    new Promise<string>((resolve, reject) => {
      const c = net.connect(pf.localPort, '127.0.0.1', () => c.write(msg));
      c.on('data', (d) => {
        resolve(String(d));
        c.end();
      });
      c.on('error', reject);
    });
  expect(await Promise.all([talk('one'), talk('two')])).toEqual(['echo:one', 'echo:two']);
  await pf.stop();
  server.close();
});
