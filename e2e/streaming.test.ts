// Exec, attach and port-forward end to end: the CRI Exec/Attach/PortForward RPCs of the real
// daemon hand out URLs on its streaming server, and real clients (a client-go-shaped SPDY/3.1
// client, @kubernetes/client-node over WebSocket) drive processes and ports in a pod VM.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { WebSocket } from 'ws';
import { runK8sClient, startK8sPortForward } from '../test/streaming/support/harness';
import { collect, spdyAttachEcho, spdyConnect, spdyExec, spdyHttpGet } from '../test/streaming/support/spdy-client';
import { rawSpdyConnect, synStreamBomb } from '../test/streaming/support/raw-spdy';
import { FrameParser, pingFrame } from '../src/streaming/spdy-codec';
import { measurePeak, MiB, rss } from '../test/support/rss';
import { runK8sStream, startK8sStreamPortForward } from '../test/streaming/support/go-client';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { containerConfig, startContainer, until } from './support/containers';
import { podConfig, type TestDaemon } from './support/daemon';

jest.setTimeout(300_000);

const SUCCESS = { metadata: {}, status: 'Success' };
const SIZE = 100 * 1024 * 1024;
const RSS_LIMIT = 64 * 1024 * 1024;

// Two requests that only complete when both are being served at the same time: each marks its
// arrival and waits (bounded) for its peer's. QUERY_STRING is "<me>.<peer>".
// No Content-Length: the response ends when httpd closes the connection.
const MEET_CGI = `#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
me=\${QUERY_STRING%%.*}
peer=\${QUERY_STRING#*.}
touch /tmp/meet-$me
i=0
while [ ! -e /tmp/meet-$peer ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
if [ -e /tmp/meet-$peer ]; then echo "$me met $peer"; else echo "$me alone"; fi
`;

let setup: BusyboxDaemon | undefined;
let d: TestDaemon;
let image: string;
let pod: string;
let podCfg: any;
let logDir: string;
const ctr: Record<string, string> = {};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function state(id: string): Promise<string> {
  return (await d.runtime('ContainerStatus', { container_id: id })).status.state;
}

async function runContainer(name: string, command: string[], extra: Record<string, unknown> = {}, want = 'CONTAINER_RUNNING'): Promise<string> {
  const container_id = await startContainer(d, pod, podCfg, containerConfig(image, name, command, extra));
  await until(`${name} ${want}`, async () => (await state(container_id)) === want);
  return container_id;
}

const execUrl = async (id: string, cmd: string[], opts: { stdin?: boolean; stderr?: boolean; tty?: boolean } = {}): Promise<string> =>
  (await d.runtime('Exec', { container_id: id, cmd, stdout: true, stdin: !!opts.stdin, stderr: !!opts.stderr, tty: !!opts.tty })).url;

const attachUrl = async (id: string, opts: { stdin?: boolean; stderr?: boolean; tty?: boolean }): Promise<string> =>
  (await d.runtime('Attach', { container_id: id, stdout: true, stdin: !!opts.stdin, stderr: !!opts.stderr, tty: !!opts.tty })).url;

const portForwardUrl = async (port: number): Promise<string> => (await d.runtime('PortForward', { pod_sandbox_id: pod, port: [port] })).url;

/** The daemon process TestDaemon spawned; fails when it is not running. */
function daemonPid(): number {
  expect(d.alive).toBe(true);
  return d.pid!;
}

/** Samples the daemon's RSS until stopped: baseline, peak, last. */
function rssWatch(pid: number) {
  const base = rss(pid);
  let peak = base;
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, rss(pid));
    } catch {
      /* reported by the final read */
    }
  }, 100);
  return {
    base,
    peakNow: () => peak,
    stop: () => {
      clearInterval(t);
      const last = rss(pid);
      return { base, peak: Math.max(peak, last), last };
    },
  };
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

function httpGet(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 120_000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${urlPath}`)));
    req.on('error', reject);
  });
}

/** A WebSocket upgrade that must fail: its HTTP status. */
function wsRefused(url: string, protocols: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), protocols);
    ws.on('unexpected-response', (_req, res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    ws.on('open', () => {
      ws.close();
      reject(new Error('websocket opened'));
    });
    ws.on('error', () => undefined);
  });
}

beforeAll(async () => {
  setup = await startBusyboxDaemon({}, {
    extra: [
      { name: 'www/', type: 'directory' },
      { name: 'www/index.html', content: 'hello through port-forward\n' },
      { name: 'www/cgi-bin/', type: 'directory' },
      { name: 'www/cgi-bin/meet', content: MEET_CGI, mode: 0o755 },
    ],
  });
  ({ d, image } = setup);
  // no CNI network: port-forward dials 127.0.0.1 inside the guest
  logDir = path.join(d.logs, 'stream');
  podCfg = podConfig('stream', logDir);
  pod = (await d.runtime('RunPodSandbox', { config: podCfg })).pod_sandbox_id;
  ctr.main = await runContainer('main', ['/bin/sleep', '3600']);
  ctr.web = await runContainer('web', ['/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/www']);
  ctr.sh = await runContainer('tty-sh', ['/bin/sh'], { stdin: true, tty: true });
  ctr.cat = await runContainer('cat', ['/bin/cat'], { stdin: true });
  ctr.done = await runContainer('done', ['/bin/true'], {}, 'CONTAINER_EXITED');
}, 600_000);

// PV_KEEP_LOG=<file> keeps the daemon's log (e2e/support/daemon.ts)
afterAll(() => setup?.close());

describe('exec without a tty', () => {
  test('SPDY: stdout, stderr, exit code 0 as a Success Status', async () => {
    const url = await execUrl(ctr.main, ['/bin/sh', '-c', 'echo out; echo err >&2'], { stderr: true });
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{22}$/);
    const r = await spdyExec(url, { stderr: true });
    expect(r).toEqual({ stdout: 'out\n', stderr: 'err\n', status: JSON.stringify(SUCCESS) });
  });

  test('SPDY: a non-zero exit is a NonZeroExitCode Status with an ExitCode cause', async () => {
    const cmd = ['/bin/sh', '-c', 'echo bye; echo oops >&2; exit 3'];
    const r = await spdyExec(await execUrl(ctr.main, cmd, { stderr: true }), { stderr: true });
    expect(r.stdout).toBe('bye\n');
    expect(r.stderr).toBe('oops\n');
    expect(JSON.parse(r.status)).toEqual({
      metadata: {},
      status: 'Failure',
      message: `command terminated with non-zero exit code: error executing command [${cmd.join(' ')}], exit code 3`,
      reason: 'NonZeroExitCode',
      details: { causes: [{ reason: 'ExitCode', message: '3' }] },
    });
  });

  test('WebSocket (client-node): v5, stdout, stderr, exit codes 0 and 7', async () => {
    const ok = await runK8sClient('exec', await execUrl(ctr.main, ['/bin/sh', '-c', 'echo out; echo err >&2'], { stderr: true }), {});
    expect(ok).toMatchObject({ protocol: 'v5.channel.k8s.io', stdout: 'out\n', stderr: 'err\n', status: SUCCESS });
    const bad = await runK8sClient('exec', await execUrl(ctr.main, ['/bin/sh', '-c', 'echo x; exit 7'], { stderr: true }), {});
    expect(bad.stdout).toBe('x\n');
    expect(bad.status).toMatchObject({ status: 'Failure', reason: 'NonZeroExitCode', details: { causes: [{ reason: 'ExitCode', message: '7' }] } });
  });

  test('a command that does not exist is an InternalError Status, and the daemon lives on', async () => {
    const pid = daemonPid();
    const r = await spdyExec(await execUrl(ctr.main, ['/no/such/binary'], { stderr: true }), { stderr: true });
    expect(JSON.parse(r.status)).toMatchObject({ status: 'Failure', reason: 'InternalError', code: 500, message: expect.stringContaining('/no/such/binary') });
    const ws = await runK8sClient('exec', await execUrl(ctr.main, ['/no/such/binary']), {});
    expect(ws.status).toMatchObject({ status: 'Failure', reason: 'InternalError' });
    // the streams of the failed start were torn down without an unhandled rejection
    expect((await spdyExec(await execUrl(ctr.main, ['/bin/echo', 'alive']), {})).stdout).toBe('alive\n');
    expect(daemonPid()).toBe(pid);
  });
});

describe('exec with stdin', () => {
  test('SPDY: binary stdin to sha256sum, ended by half-closing the stdin stream', async () => {
    const data = randomBytes(512 * 1024 + 7);
    const r = await spdyExec(await execUrl(ctr.main, ['/bin/busybox', 'sha256sum'], { stdin: true }), {
      stdin: true,
      input: (s) => {
        s.write(data.subarray(0, 1000));
        s.end(data.subarray(1000)); // FIN: the process sees EOF and exits
      },
    });
    expect(r.stdout.split(' ')[0]).toBe(createHash('sha256').update(data).digest('hex'));
    expect(r.status).toBe(JSON.stringify(SUCCESS));
  });

  test('SPDY: cat echoes exactly the bytes sent', async () => {
    const data = randomBytes(256 * 1024);
    const c = await spdyConnect(await execUrl(ctr.main, ['/bin/cat'], { stdin: true }), ['v4.channel.k8s.io']);
    const error = c.open({ streamType: 'error' });
    error.end();
    const st = collect(error);
    const stdin = c.open({ streamType: 'stdin' });
    const out = c.open({ streamType: 'stdout' });
    out.end();
    stdin.resume();
    const got = collect(out);
    stdin.end(data);
    expect((await got).equals(data)).toBe(true);
    expect((await st).toString()).toBe(JSON.stringify(SUCCESS));
    c.close();
  });

  test('WebSocket (client-node): round trip through cat, stdin closed with the v5 close frame', async () => {
    const text = Array.from({ length: 2000 }, (_, i) => `line ${i} ${'x'.repeat(i % 50)}`).join('\n') + '\n';
    const r = await runK8sClient('exec', await execUrl(ctr.main, ['/bin/cat'], { stdin: true }), { stdin: true }, (w) => w.end(text));
    expect(r.protocol).toBe('v5.channel.k8s.io');
    expect(r.stdout).toBe(text);
    expect(r.status).toEqual(SUCCESS);
    const data = randomBytes(1024 * 1024 + 3);
    const h = await runK8sClient('exec', await execUrl(ctr.main, ['/bin/busybox', 'sha256sum'], { stdin: true }), { stdin: true }, (w) => w.end(data));
    expect(h.stdout.split(' ')[0]).toBe(createHash('sha256').update(data).digest('hex'));
  });
});

describe('exec with a tty', () => {
  // waits (bounded) until the terminal has the wanted size, then prints it
  const waitSize = (want: string) => [
    '/bin/sh',
    '-c',
    `test -t 0 && test -t 1 && echo on-a-tty; i=0; while [ "$(/bin/busybox stty size)" != "${want}" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo "size=$(/bin/busybox stty size)"`,
  ];

  test('SPDY: a resize on the resize stream is what stty sees in the guest', async () => {
    const r = await spdyExec(await execUrl(ctr.main, waitSize('33 101'), { stdin: true, tty: true }), {
      stdin: true,
      tty: true,
      resize: (s) => s.write('{"Width":101,"Height":33}\n'),
    });
    const out = r.stdout.replace(/\r/g, '');
    expect(out).toContain('on-a-tty\n');
    expect(out).toContain('size=33 101\n');
    expect(r.status).toBe(JSON.stringify(SUCCESS));
  });

  test('SPDY: a later resize too', async () => {
    const r = await spdyExec(await execUrl(ctr.main, waitSize('50 160'), { stdin: true, tty: true }), {
      stdin: true,
      tty: true,
      resize: (s) => {
        s.write('{"Width":80,"Height":24}\n');
        setTimeout(() => s.write('{"Width":160,"Height":50}\n'), 500);
      },
    });
    expect(r.stdout.replace(/\r/g, '')).toContain('size=50 160\n');
  });

  test('WebSocket (client-node): the terminal size client-node sends (33x101) reaches stty', async () => {
    const r = await runK8sClient('exec', await execUrl(ctr.main, waitSize('33 101'), { stdin: true, tty: true }), { tty: true, stdin: true }, () => undefined);
    const out = r.stdout.replace(/\r/g, '');
    expect(out).toContain('on-a-tty\n');
    expect(out).toContain('size=33 101\n');
    expect(r.status).toEqual(SUCCESS);
  });
});

describe('attach', () => {
  test('SPDY: to a /bin/sh on a tty: a typed command runs, resizes reach its terminal, leaving keeps it running', async () => {
    const c = await spdyConnect(await attachUrl(ctr.sh, { stdin: true, tty: true }), ['v4.channel.k8s.io']);
    const error = c.open({ streamType: 'error' });
    error.end();
    const st = collect(error);
    const stdin = c.open({ streamType: 'stdin' });
    const stdout = c.open({ streamType: 'stdout' });
    const resize = c.open({ streamType: 'resize' });
    stdout.end();
    stdin.resume();
    resize.resume();
    let got = '';
    stdout.on('data', (b: Buffer) => (got += b.toString()));
    stdin.write('echo attached-$((6*7))\n');
    await until('the shell output', () => /attached-42\r?\n/.test(got));
    resize.write('{"Width":91,"Height":27}\n');
    stdin.write('i=0; while [ "$(/bin/busybox stty size)" != "27 91" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo "sz=$(/bin/busybox stty size)"\n');
    await until('the terminal size', () => /sz=27 91\r?\n/.test(got));
    stdin.end(); // leaving: without stdin_once the container keeps running
    expect((await st).toString()).toBe(JSON.stringify(SUCCESS));
    c.close();
    expect(await state(ctr.sh)).toBe('CONTAINER_RUNNING');
  });

  test('SPDY: to cat without a tty: a line written comes back', async () => {
    expect(await spdyAttachEcho(await attachUrl(ctr.cat, { stdin: true, stderr: true }), 'hello over spdy attach\n')).toBe(JSON.stringify(SUCCESS));
    expect(await state(ctr.cat)).toBe('CONTAINER_RUNNING');
  });

  test('WebSocket (client-node): to cat without a tty: a line written comes back', async () => {
    const log = path.join(logDir, 'cat.log');
    const line = `ping over ws attach ${Date.now()}`;
    const r = await runK8sClient('attach', await attachUrl(ctr.cat, { stdin: true, stderr: true }), { stdin: true }, (w) => {
      w.write(`${line}\n`);
      // leave once cat's answer went through the daemon (attach taps see it before the log)
      until('the line in the container log', () => fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes(line)).then(
        () => w.end(),
        () => w.end(),
      );
    });
    expect(r).toMatchObject({ protocol: 'v5.channel.k8s.io', stdout: `${line}\n`, stderr: '' });
    expect(await state(ctr.cat)).toBe('CONTAINER_RUNNING');
  });
});

describe('port-forward to busybox httpd in the pod', () => {
  test('SPDY: two parallel connections on one session, each served concurrently', async () => {
    const url = await portForwardUrl(8080);
    expect(url).toMatch(/\/portforward\/[A-Za-z0-9_-]{22}$/);
    const c = await spdyConnect(url, ['portforward.k8s.io']);
    try {
      expect(c.protocol).toBe('portforward.k8s.io');
      // httpd is up once the container runs, but may not listen yet: retry the first request
      const first = await until('httpd to answer', async () => {
        const r = await spdyHttpGet(c, `probe-${Date.now()}`, 8080, '/index.html');
        return r.response.startsWith('HTTP/1.') ? r : false;
      }, 60_000, 300);
      expect(first.response).toMatch(/^HTTP\/1\.[01] 200 OK[\s\S]*\r\n\r\nhello through port-forward\n$/);
      const [a, b] = await Promise.all([spdyHttpGet(c, '0', 8080, '/cgi-bin/meet?spdy1.spdy2'), spdyHttpGet(c, '1', 8080, '/cgi-bin/meet?spdy2.spdy1')]);
      expect(a.error).toBe('');
      expect(b.error).toBe('');
      expect(a.response).toMatch(/\r\n\r\nspdy1 met spdy2\n$/);
      expect(b.response).toMatch(/\r\n\r\nspdy2 met spdy1\n$/);
      // the session stays usable
      expect((await spdyHttpGet(c, '2', 8080, '/index.html')).response).toMatch(/hello through port-forward\n$/);
      // a port nobody listens on is an error on the error stream, the session survives
      const refused = await spdyHttpGet(c, '3', 8081, '/');
      expect(refused.response).toBe('');
      expect(refused.error).toMatch(new RegExp(`^error forwarding port 8081 to pod ${pod}`));
      expect((await spdyHttpGet(c, '4', 8080, '/index.html')).response).toMatch(/hello through port-forward\n$/);
    } finally {
      c.close();
    }
  }, 180_000);

  test('WebSocket (client-node PortForward): two parallel connections', async () => {
    // a single-use URL per WebSocket, as kubelet hands them out
    const urls = await Promise.all([0, 1, 2].map(() => portForwardUrl(8080)));
    const pf = await startK8sPortForward(8080, urls);
    try {
      const [a, b] = await Promise.all([httpGet(pf.localPort, '/cgi-bin/meet?ws1.ws2'), httpGet(pf.localPort, '/cgi-bin/meet?ws2.ws1')]);
      expect(a).toEqual({ status: 200, body: 'ws1 met ws2\n' });
      expect(b).toEqual({ status: 200, body: 'ws2 met ws1\n' });
      expect(await httpGet(pf.localPort, '/index.html')).toEqual({ status: 200, body: 'hello through port-forward\n' });
    } finally {
      pf.stop();
    }
  }, 180_000);
});

describe('100 MiB through exec stdout to a slow client', () => {
  const cmd = ['/bin/busybox', 'head', '-c', String(SIZE), '/dev/zero'];

  test('SPDY: all bytes arrive, the daemon RSS stays flat', async () => {
    const pid = daemonPid();
    const watch = rssWatch(pid);
    const t0 = Date.now();
    const c = await spdyConnect(await execUrl(ctr.main, cmd), ['v4.channel.k8s.io']);
    c.socket.pause(); // reads nothing for a while
    const error = c.open({ streamType: 'error' });
    error.end();
    const st = collect(error);
    const out = c.open({ streamType: 'stdout' });
    out.end();
    let bytes = 0;
    let nonZero = 0;
    const done = new Promise<void>((resolve, reject) => {
      out.on('data', (b: Buffer) => {
        bytes += b.length;
        if (b.some((x) => x !== 0)) nonZero++;
      });
      out.on('end', resolve);
      out.on('error', reject);
    });
    // ~12 s at the guest's ~8 MB/s would be ~100 MB buffered somewhere without back-pressure
    await sleep(12_000);
    const duringPause = watch.peakNow();
    c.socket.resume();
    await done;
    expect((await st).toString()).toBe(JSON.stringify(SUCCESS));
    c.close();
    const { base, peak, last } = watch.stop();
    const secs = (Date.now() - t0) / 1000;
    console.log(`SPDY 100 MiB: ${secs.toFixed(1)} s; daemon VmRSS base ${mib(base)}, peak while paused ${mib(duringPause)}, peak ${mib(peak)}, after ${mib(last)}`);
    expect(bytes).toBe(SIZE);
    expect(nonZero).toBe(0);
    expect(peak - base).toBeLessThan(RSS_LIMIT);
  }, 600_000);

  test('WebSocket (client-node): all bytes arrive, the daemon RSS stays flat', async () => {
    const pid = daemonPid();
    const watch = rssWatch(pid);
    const t0 = Date.now();
    const r = await runK8sClient('exec', await execUrl(ctr.main, cmd), { pauseMs: 12_000, countOnly: true });
    const { base, peak, last } = watch.stop();
    console.log(`WebSocket 100 MiB: ${((Date.now() - t0) / 1000).toFixed(1)} s; daemon VmRSS base ${mib(base)}, peak ${mib(peak)}, after ${mib(last)}`);
    expect(r.status).toEqual(SUCCESS);
    expect(r.stdoutBytes).toBe(SIZE);
    expect(peak - base).toBeLessThan(RSS_LIMIT);
  }, 600_000);
});

describe("Kubernetes' own client (client-go remotecommand and portforward) against a pod VM", () => {
  test.each(['spdy', 'websocket'])('exec over %s: stdout, stderr, exit codes', async (transport) => {
    const t = ['-transport', transport];
    expect(await runK8sStream('exec', await execUrl(ctr.main, ['/bin/sh', '-c', 'echo out; echo err >&2'], { stderr: true }), [...t, '-stderr'])).toEqual({ stdout: 'out\n', stderr: 'err\n', exitCode: 0 });
    const bad = await runK8sStream('exec', await execUrl(ctr.main, ['/bin/sh', '-c', 'exit 7']), t);
    expect(bad.exitCode).toBe(7);
  });

  test.each(['spdy', 'websocket'])('exec over %s with stdin and a tty: input echoes, the size reaches stty', async (transport) => {
    const url = await execUrl(ctr.main, ['/bin/sh', '-c', 'read line; echo "got $line"; stty size'], { stdin: true, tty: true });
    const r = await runK8sStream('exec', url, ['-transport', transport, '-stdin', '-tty', '-resize', '101x33'], 'hello\n', { keepStdinOpenMs: 3000 });
    expect(r.stdout).toContain('got hello');
    expect(r.stdout).toContain('33 101');
    expect(r.exitCode).toBe(0);
  });

  test('attach over SPDY to cat: a line written comes back', async () => {
    const url = (await d.runtime('Attach', { container_id: ctr.cat, stdin: true, stdout: true })).url;
    const r = await runK8sStream('attach', url, ['-stdin'], 'through client-go\n', { keepStdinOpenMs: 3000 });
    expect(r.stdout).toContain('through client-go\n');
  });

  test('port-forward (SPDY) to httpd: two connections through one session', async () => {
    const pf = await startK8sStreamPortForward(await portForwardUrl(8080), 8080);
    try {
      const get = (p: string) =>
        new Promise<string>((resolve, reject) => {
          http.get({ host: '127.0.0.1', port: pf.localPort, path: p, agent: false }, (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve(body));
          }).on('error', reject);
        });
      await until('httpd through client-go', async () => (await get('/index.html').catch(() => '')) === 'hello through port-forward\n', 60_000, 300);
      expect(await Promise.all([get('/cgi-bin/meet?go1.go2'), get('/cgi-bin/meet?go2.go1')])).toEqual(['go1 met go2\n', 'go2 met go1\n']);
    } finally {
      await pf.stop();
    }
  }, 180_000);
});

describe('hostile SPDY clients (issue 17)', () => {
  test("the pod VM's directory, console log and QEMU log are root's alone", () => {
    const dir = path.join(d.state, 'vm', pod.slice(0, 16));
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(dir, 'console.log')).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(dir, 'qemu.log')).mode & 0o777).toBe(0o600);
  });

  test('a 132 KB SYN_STREAM that inflates to 130 MiB of NULs: GOAWAY, the daemon lives, its peak RSS bounded', async () => {
    const pid = daemonPid();
    const bomb = await synStreamBomb(1, 130 * MiB);
    expect(bomb.length).toBeLessThan(200 * 1024);
    const { growth } = await measurePeak('daemon, SPDY header bomb', pid, async () => {
      const c = await rawSpdyConnect(await execUrl(ctr.main, ['/bin/echo', 'x']), 'v4.channel.k8s.io');
      c.socket.write(bomb);
      await c.closed;
      expect(c.frames).toEqual([{ type: 7 /* GOAWAY */, a: 0, b: 1 /* PROTOCOL_ERROR */ }]);
    });
    expect(growth).toBeLessThan(32 * MiB);
    expect(daemonPid()).toBe(pid);
    expect((await spdyExec(await execUrl(ctr.main, ['/bin/echo', 'still here']), {})).stdout).toBe('still here\n');
  });

  test('50k PINGs from a client that does not read: the daemon stops reading, its peak RSS bounded, every PING answered in order', async () => {
    const pid = daemonPid();
    const N = 50_000;
    const c = await rawSpdyConnect(await execUrl(ctr.main, ['/bin/echo', 'x']), 'v4.channel.k8s.io', { read: false });
    const pings = Buffer.concat(Array.from({ length: N }, (_, i) => pingFrame(2 * i + 1)));
    const { growth } = await measurePeak('daemon, SPDY PING flood from a client not reading', pid, async () => {
      c.socket.write(pings);
      await new Promise((r) => setTimeout(r, 1500));
    });
    expect(growth).toBeLessThan(32 * MiB);
    const got: number[] = [];
    const parser = new FrameParser({ control: (f) => got.push(f.body.readUInt32BE(0)), data: () => undefined, error: (e) => { throw e; } });
    c.socket.on('data', (b: Buffer) => parser.push(b));
    c.socket.resume();
    await until('every PING answered', async () => got.length >= N, 60_000, 50);
    expect(got.length).toBe(N);
    expect(got.every((id, i) => id === 2 * i + 1)).toBe(true);
    c.socket.destroy();
    expect(daemonPid()).toBe(pid);
  });
});

describe('errors', () => {
  test('unknown container or pod: NOT_FOUND', async () => {
    await expect(d.runtime('Exec', { container_id: 'nope', cmd: ['/bin/true'], stdout: true })).rejects.toMatchObject({ code: grpcStatus.NOT_FOUND });
    await expect(d.runtime('Attach', { container_id: 'nope', stdout: true })).rejects.toMatchObject({ code: grpcStatus.NOT_FOUND });
    await expect(d.runtime('PortForward', { pod_sandbox_id: 'nope', port: [80] })).rejects.toMatchObject({ code: grpcStatus.NOT_FOUND });
  });

  test('a stopped container: FAILED_PRECONDITION', async () => {
    expect(await state(ctr.done)).toBe('CONTAINER_EXITED');
    await expect(d.runtime('Exec', { container_id: ctr.done, cmd: ['/bin/true'], stdout: true })).rejects.toMatchObject({ code: grpcStatus.FAILED_PRECONDITION });
    await expect(d.runtime('Attach', { container_id: ctr.done, stdout: true })).rejects.toMatchObject({ code: grpcStatus.FAILED_PRECONDITION });
  });

  test('attach with stdin to a container created without stdin: INVALID_ARGUMENT', async () => {
    await expect(d.runtime('Attach', { container_id: ctr.main, stdin: true, stdout: true })).rejects.toMatchObject({ code: grpcStatus.INVALID_ARGUMENT });
  });

  test('a URL is single-use: the second connection gets 404 (SPDY and WebSocket)', async () => {
    const url = await execUrl(ctr.main, ['/bin/echo', 'once']);
    expect((await spdyExec(url, {})).stdout).toBe('once\n');
    await expect(spdyConnect(url, ['v4.channel.k8s.io'])).rejects.toMatchObject({ status: 404 });
    expect(await wsRefused(url, ['v5.channel.k8s.io'])).toBe(404);
    const ws = await execUrl(ctr.main, ['/bin/echo', 'twice?']);
    expect((await runK8sClient('exec', ws, {})).stdout).toBe('twice?\n');
    await expect(spdyConnect(ws, ['v4.channel.k8s.io'])).rejects.toMatchObject({ status: 404 });
    const pf = await portForwardUrl(8080);
    (await spdyConnect(pf, ['portforward.k8s.io'])).close();
    await expect(spdyConnect(pf, ['portforward.k8s.io'])).rejects.toMatchObject({ status: 404 });
  });

  test('exec into a container that is stopped meanwhile: the URL no longer works', async () => {
    const id = await runContainer('short', ['/bin/sleep', '3600']);
    const url = await execUrl(id, ['/bin/echo', 'late']);
    await d.runtime('StopContainer', { container_id: id, timeout: 0 });
    await until('short exited', async () => (await state(id)) === 'CONTAINER_EXITED');
    const r = await spdyExec(url, {}).catch((e) => e);
    // either refused at the upgrade or a Failure status, never a hang or a success
    if (r instanceof Error) expect(r).toMatchObject({ status: expect.any(Number) });
    else expect(JSON.parse(r.status)).toMatchObject({ status: 'Failure' });
  });
});
