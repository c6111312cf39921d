// The step timer (src/util/steps.ts): one debug line per operation with each step's milliseconds,
// and nothing at all when the logger is above debug.
import { Writable } from 'node:stream';
import pino from 'pino';
import { stepTimer } from '../src/util/steps';

function capture(level: string): { logger: pino.Logger; lines: Array<Record<string, any>> } {
  const lines: Array<Record<string, any>> = [];
  const sink = new Writable({ write(chunk, _enc, cb) { lines.push(JSON.parse(chunk.toString())); cb(); } });
  return { logger: pino({ level }, sink), lines };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('logs each step once at debug level, with the time between marks and the total', async () => {
  const { logger, lines } = capture('debug');
  const t = stepTimer(logger, 'CreateContainer', { container: 'c1' });
  await sleep(20);
  t.mark('image');
  await sleep(5);
  t.mark('guest');
  t.done();
  await sleep(10);
  expect(lines).toHaveLength(1);
  const l = lines[0];
  expect(l).toMatchObject({ level: 20, msg: 'step times', op: 'CreateContainer', container: 'c1' });
  expect(Object.keys(l.steps)).toEqual(['image', 'guest']);
  expect(l.steps.image).toBeGreaterThanOrEqual(15);
  expect(l.steps.guest).toBeGreaterThanOrEqual(3);
  expect(l.steps.guest).toBeLessThan(l.steps.image);
  expect(l.ms).toBeGreaterThanOrEqual(l.steps.image + l.steps.guest - 0.2);
});

test('a step marked twice adds up', async () => {
  const { logger, lines } = capture('debug');
  const t = stepTimer(logger, 'op');
  await sleep(5);
  t.mark('a');
  await sleep(5);
  t.mark('a');
  t.done();
  expect(lines[0].steps.a).toBeGreaterThanOrEqual(8);
});

test('logs nothing above debug', () => {
  const { logger, lines } = capture('info');
  const t = stepTimer(logger, 'op');
  t.mark('a');
  t.done();
  expect(lines).toHaveLength(0);
});

test('an operation with no end after the slow bound logs the steps it got through, once; done() then logs the whole', async () => {
  const { logger, lines } = capture('debug');
  const t = stepTimer(logger, 'CreateContainer', { container: 'c2' }, 40);
  t.mark('lock');
  await sleep(100);
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatchObject({ op: 'CreateContainer', container: 'c2', steps: { lock: expect.any(Number) } });
  expect(lines[0].msg).toMatch(/^step times so far: no end after 40 ms/);
  expect(lines[0].ms).toBeGreaterThanOrEqual(35);
  t.mark('image');
  t.done({ failed: true });
  expect(lines).toHaveLength(2);
  expect(lines[1]).toMatchObject({ msg: 'step times', failed: true });
  expect(Object.keys(lines[1].steps)).toEqual(['lock', 'image']);
});

test('an operation done in time logs no slow line', async () => {
  const { logger, lines } = capture('debug');
  const t = stepTimer(logger, 'op', {}, 30);
  t.mark('a');
  t.done();
  await sleep(60);
  expect(lines.map((l) => l.msg)).toEqual(['step times']);
});
