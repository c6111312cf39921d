// QmpClient against a fake monitor on a unix socket: a command QEMU never answers must end (a
// Timeout), and must not leave the connection in a state where a late answer is taken for the
// next command's: later commands fail as Closed. Without the bound, a silent monitor held the
// caller forever (and a pod's lock with it: an image attach under CreateContainer).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { QmpClient, QmpError } from '../../src/vm/qmp';

let dir: string;
let server: net.Server;
let sock: string;
/** commands the fake monitor never answers (it answers them late when `late` is set) */
const silent = new Set(['hang']);
let late: net.Socket[] = [];
const conns: net.Socket[] = [];

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-qmp-'));
  sock = path.join(dir, 'qmp.sock');
  server = net.createServer((c) => {
    conns.push(c);
    c.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (silent.has(msg.execute)) late.push(c);
        else c.write(JSON.stringify({ return: { command: msg.execute } }) + '\n');
      }
    });
    c.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(sock, r));
});

afterAll(async () => {
  for (const c of conns) c.destroy();
  await new Promise((r) => server.close(r));
  fs.rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  late = [];
});

describe('QmpClient command bound', () => {
  it('answers commands in order', async () => {
    const q = await QmpClient.connect(sock, 5000);
    expect(await q.execute('query-status')).toEqual({ command: 'query-status' });
    expect(await q.execute('query-balloon', undefined, 1000)).toEqual({ command: 'query-balloon' });
    q.close();
  });

  it('a command QEMU does not answer fails with a Timeout; the connection is closed so no late answer is misread', async () => {
    const q = await QmpClient.connect(sock, 5000);
    const t0 = Date.now();
    const hung = q.execute('hang', undefined, 300);
    const next = q.execute('query-status');
    await expect(hung).rejects.toMatchObject({ errorClass: 'Timeout' });
    expect(Date.now() - t0).toBeLessThan(3000);
    // the answer to 'hang' arrives now: it must not become query-status's
    for (const c of late) c.write(JSON.stringify({ return: { command: 'hang' } }) + '\n');
    await expect(next).rejects.toBeInstanceOf(QmpError);
    await expect(next).rejects.toMatchObject({ errorClass: 'Closed' });
    await expect(q.execute('query-status')).rejects.toMatchObject({ errorClass: 'Closed' });
  }, 10_000);
});
