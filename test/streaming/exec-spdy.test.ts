// Exec and attach over SPDY/3.1, driven by a spdy-transport client speaking client-go's
// remotecommand stream layout.
import { createHash, randomBytes } from 'node:crypto';
import { collect, spdyConnect, spdyExec } from './support/spdy-client';
import { sleep, startServer } from './support/harness';

describe('exec over SPDY', () => {
  let ctx: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => (ctx = await startServer()));
  afterAll(() => ctx.stop());
  const url = (req: object) => ctx.server.getExec({ container_id: 'c1', stdout: true, ...req }).url;

  test('stdout, stderr and exit code 0 as a v4 Status', async () => {
    const r = await spdyExec(url({ cmd: ['sh', '-c', 'echo out; echo err >&2'], stderr: true }), { stderr: true });
    expect(r).toEqual({ stdout: 'out\n', stderr: 'err\n', status: '{"metadata":{},"status":"Success"}' });
  });

  test('a non-zero exit is a NonZeroExitCode Status', async () => {
    const r = await spdyExec(url({ cmd: ['sh', '-c', 'echo bye; exit 3'] }), {});
    expect(r.stdout).toBe('bye\n');
    expect(JSON.parse(r.status)).toEqual({
      metadata: {},
      status: 'Failure',
      message: 'command terminated with non-zero exit code: error executing command [sh -c echo bye; exit 3], exit code 3',
      reason: 'NonZeroExitCode',
      details: { causes: [{ reason: 'ExitCode', message: '3' }] },
    });
    expect(r.status.startsWith('{"metadata":{},"status":"Failure","message":')).toBe(true);
  });

  test.each(['v5.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'])('protocol %s', async (protocol) => {
    const ok = await spdyExec(url({ cmd: ['echo', 'hi'] }), { protocol });
    expect(ok.stdout).toBe('hi\n');
    const bad = await spdyExec(url({ cmd: ['sh', '-c', 'exit 2'] }), { protocol });
    if (protocol.startsWith('v5')) {
      expect(ok.status).toBe('{"metadata":{},"status":"Success"}');
      expect(JSON.parse(bad.status).details.causes[0].message).toBe('2');
    } else {
      // before v4 the error stream only carries a failure's text
      expect(ok.status).toBe('');
      expect(bad.status).toMatch(/exit code 2$/);
    }
  });

  test('a backend failure is an InternalError Status', async () => {
    const r = await spdyExec(url({ cmd: ['/nonexistent/binary'] }), {});
    expect(JSON.parse(r.status)).toMatchObject({ status: 'Failure', reason: 'InternalError', code: 500 });
  });

  test('binary stdin round trip, closed by half-closing the stream', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const r = await spdyExec(url({ cmd: ['sha256sum'], stdin: true }), {
      stdin: true,
      input: (s) => {
        s.write(data.subarray(0, 1000));
        s.end(data.subarray(1000)); // FIN: the process sees EOF
      },
    });
    expect(r.stdout.split(' ')[0]).toBe(createHash('sha256').update(data).digest('hex'));
    expect(r.status).toBe('{"metadata":{},"status":"Success"}');
  });

  test('binary stdout is passed through unchanged', async () => {
    const c = await spdyConnect(url({ cmd: ['sh', '-c', 'f=$(mktemp); head -c 2000000 /dev/urandom >$f; sha256sum <$f >&2; cat $f; rm $f'], stderr: true }), ['v4.channel.k8s.io']);
    c.open({ streamType: 'error' }).end();
    const out = c.open({ streamType: 'stdout' });
    const err = c.open({ streamType: 'stderr' });
    out.end();
    err.end();
    const [o, e] = await Promise.all([collect(out), collect(err)]);
    c.close();
    expect(o.length).toBe(2000000);
    expect(createHash('sha256').update(o).digest('hex')).toBe(e.toString().split(' ')[0]);
  });

  test('tty: the command runs on a terminal and resizes reach the backend', async () => {
    ctx.backend.resizes.length = 0;
    const r = await spdyExec(url({ cmd: ['sh', '-c', 'test -t 0 && test -t 1 && echo on-a-tty; sleep 0.3'], tty: true, stdin: true }), {
      stdin: true,
      tty: true,
      resize: (s) => {
        s.write('{"Width":80,"Height":24}\n');
        setTimeout(() => s.write('{"Width":120,"Height":40}\n'), 50);
      },
    });
    expect(r.stdout.replace(/\r/g, '')).toContain('on-a-tty\n');
    expect(r.status).toBe('{"metadata":{},"status":"Success"}');
    expect(ctx.backend.execs.at(-1)).toMatchObject({ tty: true });
    expect(ctx.backend.resizes).toEqual([
      { width: 80, height: 24 },
      { width: 120, height: 40 },
    ]);
  });

  test('attach joins the container stdio and ends with Success when the client leaves', async () => {
    const { url: u } = ctx.server.getAttach({ container_id: 'c1', stdin: true, stdout: true });
    const c = await spdyConnect(u, ['v4.channel.k8s.io']);
    const error = c.open({ streamType: 'error' });
    error.end();
    const status = collect(error);
    const stdin = c.open({ streamType: 'stdin' });
    const stdout = c.open({ streamType: 'stdout' });
    stdout.end();
    stdin.resume();
    const got: Buffer[] = [];
    stdout.on('data', (d: Buffer) => got.push(d));
    stdin.write('hello attach\n');
    for (let i = 0; i < 50 && !Buffer.concat(got).toString().includes('hello attach'); i++) await sleep(20);
    expect(Buffer.concat(got).toString()).toBe('hello attach\n');
    stdin.end(); // leaving
    expect((await status).toString()).toBe('{"metadata":{},"status":"Success"}');
    c.close();
  });
});
