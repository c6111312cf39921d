// Fuzz: a fake guest agent writes random, malformed and hostile frames (random kinds, ids,
// JSON and binary payloads, lying lengths, split at random points) to the host's AgentClient
// over a real unix socket. Every request must settle (result, or an AgentError: protocol,
// timeout, unavailable), a protocol error must close the connection, nothing may throw out of
// the client, and the process's peak RSS over the whole run stays bounded (printed).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { AgentClient, AgentError } from '../../src/agent/client';
import { Kind, MAX_DATA, MAX_PAYLOAD } from '../../src/agent/protocol';
import { fc, fuzzParams } from '../support/fuzz';
import { MiB, measurePeak } from '../support/rss';

jest.setTimeout(120_000);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-agent-fuzz-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function frame(kind: number, id: number, payload: Buffer, lie?: number): Buffer {
  const head = Buffer.alloc(9);
  head.writeUInt32BE(lie ?? 5 + payload.length, 0);
  head.writeUInt8(kind & 0xff, 4);
  head.writeUInt32BE(id >>> 0, 5);
  return Buffer.concat([head, payload]);
}

const json = (v: unknown) => Buffer.from(JSON.stringify(v) ?? 'null');
// the first request of a fresh client has id 2 (ids start after 1), the first stream id 3
const idArb = fc.oneof(fc.constantFrom(0, 1, 2, 3, 4), fc.integer({ min: 0, max: 0xffffffff }));
const payloadArb = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }).map(json),
  fc.record({ result: fc.jsonValue({ maxDepth: 2 }) }).map(json),
  fc.record({ error: fc.record({ code: fc.string(), message: fc.string({ maxLength: 10_000 }) }) }).map(json),
  fc.record({ type: fc.constantFrom('exit', 'oom', 'log', 'x'), id: fc.string(), code: fc.integer() }).map(json),
  fc.uint8Array({ maxLength: 2048 }).map((a) => Buffer.from(a)),
  fc.constantFrom(Buffer.alloc(0), Buffer.alloc(4, 0xff), Buffer.alloc(MAX_DATA + 1, 0x61), Buffer.from('{"result":'), Buffer.from('[1,2]')),
);
const frameArb = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.integer({ min: 0, max: 9 }), idArb, payloadArb).map(([k, id, p]) => frame(k, id, p)) },
  // a valid answer to the request, or an event, in among the noise
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((v) => frame(Kind.Resp, 2, json({ result: v }))) },
  { weight: 1, arbitrary: fc.constantFrom(frame(Kind.Event, 0, json({ type: 'exit', id: 'c', code: 0 }))) },
  // lengths that lie: too small, absurd, just past the limit
  { weight: 1, arbitrary: fc.constantFrom(0, 1, 4, 5 + MAX_PAYLOAD + 1, 0xffffffff).map((lie) => frame(Kind.Resp, 2, Buffer.from('{}'), lie)) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }).map((a) => Buffer.from(a)) },
);
const caseArb = fc.record({
  frames: fc.array(frameArb, { maxLength: 12 }),
  cuts: fc.array(fc.nat(), { maxLength: 6 }),
  openStream: fc.boolean(),
});

let n = 0;
const outcomes: Record<string, number> = {};
async function runCase(c: { frames: Buffer[]; cuts: number[]; openStream: boolean }, timeoutMs = 100): Promise<string> {
  const sock = path.join(dir, `a${n++}.sock`);
  const wire = Buffer.concat(c.frames);
  const cuts = [...new Set(c.cuts.map((x) => (wire.length ? x % wire.length : 0)))].sort((a, b) => a - b);
  const conns: net.Socket[] = [];
  const server = net.createServer((s) => {
    conns.push(s);
    s.on('error', () => undefined);
    s.resume(); // what the host sends is not looked at
    let at = 0;
    for (const cut of [...cuts, wire.length]) {
      if (cut > at) s.write(wire.subarray(at, cut));
      at = cut;
    }
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  const client = await AgentClient.connect(sock, 2000);
  client.on('event', () => undefined);
  let protocolError = false;
  client.on('protocol-error', () => (protocolError = true));
  const stream = c.openStream ? client.openStream() : undefined;
  stream?.resume();
  const outcome = await client.request('ping', {}, timeoutMs).then(
    () => 'result',
    (e) => {
      expect(e).toBeInstanceOf(AgentError);
      return (e as AgentError).agentCode; // the agent's (or the connection's) own code
    },
  );
  outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
  if (protocolError) expect(client.closed).toBe(true);
  client.close();
  for (const s of conns) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  return outcome;
}

test('random and hostile guest frames: every call settles, protocol errors close the connection, RSS bounded', async () => {
  // each way a call can end, once on purpose, with time to spare: how many random cases fit in
  // the time limit (and whether a 100 ms answer beats its timer) depends on the machine's load
  const answer = frame(Kind.Resp, 2, json({ result: 'pong' }));
  expect(await runCase({ frames: [answer], cuts: [3], openStream: false }, 5000)).toBe('result');
  expect(await runCase({ frames: [frame(Kind.Resp, 2, Buffer.from('{}'), 0xffffffff)], cuts: [], openStream: false }, 5000)).toBe('protocol');
  expect(await runCase({ frames: [], cuts: [], openStream: true }, 300)).toBe('timeout');
  const { growth } = await measurePeak('agent frame fuzz', 'self', () => fc.assert(fc.asyncProperty(caseArb, async (c) => { await runCase(c); }), fuzzParams('agent frames', 200, 10_000)));
  console.log(`agent frame fuzz outcomes: ${JSON.stringify(outcomes)}`);
  // every way a call can end was reached
  expect(Object.keys(outcomes)).toEqual(expect.arrayContaining(['result', 'protocol', 'timeout']));
  expect(growth).toBeLessThan(96 * MiB);
});
