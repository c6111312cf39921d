// Exec, Attach, PortForward: validate the request and hand back a single-use URL on podvisor's
// streaming server (src/streaming/server.ts), where the client then connects.
import type { AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest, PortForwardResponse } from '../../cri-api/messages';
import type { StreamingServer } from '../streaming/server';

export function streamingHandlers(server: StreamingServer) {
  return {
    async Exec(req: ExecRequest): Promise<ExecResponse> {
      return server.getExec(req);
    },
    async Attach(req: AttachRequest): Promise<AttachResponse> {
      return server.getAttach(req);
    },
    async PortForward(req: PortForwardRequest): Promise<PortForwardResponse> {
      return server.getPortForward(req);
    },
  };
}
