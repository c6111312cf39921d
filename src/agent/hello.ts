// The identity handshake (guest/PROTOCOL.md `hello`), written once for every VM the host greets:
// a pod's (cold boot, clone, reconnect, adopted spare), a template's, a spare's and the
// accelerator probe's. The host sends fresh entropy, its clock and a hostname with a nonce; an
// answer with another nonce or protocol is refused. `died` (the VM's exit) ends the wait early.
import { randomBytes } from 'node:crypto';
import type { GuestParams } from './api';
import type { AgentClient } from './client';
import { PROTOCOL_VERSION } from './protocol';

/** `hello` params: a fresh identity for the guest (host entropy, the host's clock, a hostname). */
export function helloParams(nonce: string, hostname: string): GuestParams<'hello'> {
  return {
    protocol: PROTOCOL_VERSION,
    nonce,
    time_unix_ns: (BigInt(Date.now()) * 1_000_000n).toString(),
    entropy: randomBytes(64).toString('base64'),
    hostname,
  };
}

/** Longest agent_version / boot_id kept from a guest's hello. */
export const MAX_HELLO_FIELD = 128;

export interface Greeting {
  agentVersion: string;
  bootId: string;
}

/** Greets the agent; rejects with AgentError, with `died`'s error, or when the answer is wrong. */
export async function hello(agent: AgentClient, o: { nonce: string; hostname: string; timeoutMs: number; died?: Promise<never> }): Promise<Greeting> {
  const call = agent.call('hello', helloParams(o.nonce, o.hostname), o.timeoutMs);
  const res = await (o.died ? Promise.race([call, o.died]) : call);
  if (res?.nonce !== o.nonce || res?.protocol !== PROTOCOL_VERSION) throw new Error('agent answered hello with a wrong nonce or protocol');
  // from the guest: kept short, they are copied into every record and status
  return { agentVersion: String(res.agent_version ?? '').slice(0, MAX_HELLO_FIELD), bootId: String(res.boot_id ?? '').slice(0, MAX_HELLO_FIELD) };
}
