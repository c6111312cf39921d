// The one place where the guest agent's error codes (guest/PROTOCOL.md: `invalid_argument`,
// `not_found`, `already_exists`, `failed_precondition`, `internal`, `timeout` …, plus the host
// side's own `unavailable`, `protocol`, `reset`) become the daemon's error family. Everything
// above the agent client sees a PodvisorError whose code says what the caller can do about it;
// the agent's own code stays on the error for logs and tests. Unknown codes are `internal`: the
// guest is untrusted and may send anything.
import { ErrorCode, PodvisorError } from '../util/errors';

const CODES: Record<string, ErrorCode> = {
  invalid_argument: 'invalid_argument',
  not_found: 'not_found',
  already_exists: 'already_exists',
  failed_precondition: 'failed_precondition',
  unsupported_protocol: 'failed_precondition',
  timeout: 'deadline_exceeded',
  unavailable: 'unavailable',
  protocol: 'unavailable',
  reset: 'unavailable',
  internal: 'internal',
};

/** The family code for an agent error code. */
export function agentErrorCode(agentCode: string): ErrorCode {
  return Object.prototype.hasOwnProperty.call(CODES, agentCode) ? CODES[agentCode] : 'internal';
}

/** A failed agent request, or the agent connection failing under it. */
export class AgentError extends PodvisorError {
  constructor(readonly agentCode: string, message: string) {
    super(agentErrorCode(agentCode), message);
    this.name = 'AgentError';
  }
}
