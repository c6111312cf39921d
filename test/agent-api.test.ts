// The host's guest API (src/agent/api.ts) mirrors the agent's method table: every method the
// agent dispatches (guest/agent/src/rpc.rs) is typed on the host, and the host types none the
// agent does not serve. `hello` is answered by the handshake before dispatch.
import fs from 'node:fs';
import path from 'node:path';
import { GUEST_METHODS } from '../src/agent/api';
import { agentErrorCode } from '../src/agent/errors';

test('the typed guest API names exactly the methods the agent serves', () => {
  const rpc = fs.readFileSync(path.join(__dirname, '..', 'guest', 'agent', 'src', 'rpc.rs'), 'utf8');
  const served = [...rpc.matchAll(/^\s*"([a-z_.]+)"\s*=>/gm)].map((m) => m[1]);
  expect(served.length).toBeGreaterThan(10);
  expect([...GUEST_METHODS].filter((m) => m !== 'hello').sort()).toEqual([...new Set(served)].sort());
});

test('agent error codes map once onto the error family; unknown codes are internal', () => {
  expect(agentErrorCode('not_found')).toBe('not_found');
  expect(agentErrorCode('timeout')).toBe('deadline_exceeded');
  expect(agentErrorCode('unsupported_protocol')).toBe('failed_precondition');
  expect(agentErrorCode('protocol')).toBe('unavailable');
  expect(agentErrorCode('toString')).toBe('internal');
  expect(agentErrorCode('whatever the guest says')).toBe('internal');
});
