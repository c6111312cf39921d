// Exec, Attach, PortForward: validate the request and hand back a single-use URL on podvisor's
// streaming server (src/streaming/server.ts), where the client then connects.
import type { StreamingServer } from '../streaming/server';

export function streamingHandlers(server: StreamingServer) {
  return {
    async Exec(req: any) {
      return server.getExec(req);
    },
    async Attach(req: any) {
      return server.getAttach(req);
    },
    async PortForward(req: any) {
      return server.getPortForward(req);
    },
  };
}
