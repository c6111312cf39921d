// The shapes of the CRI handlers that the gRPC server (src/server.ts) serves: the cri/ modules
// build them, the server registers them. Kept apart from the server so that the handlers never
// import the server that imports them.

/**
 * What a unary handler knows of its call besides the request: the caller's gRPC deadline (ms
 * since the epoch; absent when the caller set none), so work the caller has given up on is
 * bounded by the caller (kubelet's runtimeRequestTimeout), as containerd's contexts are.
 */
export interface CallContext {
  readonly deadline?: number;
}

/**
 * A unary CRI handler: the request as the server decodes it (cri-api/messages.ts gives each
 * handler its own request and response types); the registry only knows it takes one.
 */
export type UnaryHandler = (req: never, call: CallContext) => Promise<unknown>;
export type Handlers = Record<string, UnaryHandler>;

/** What a server-streaming handler writes to. */
export interface StreamSink {
  /** Sends one message; resolves when the transport can take more (back pressure). */
  write(msg: object): Promise<void>;
  /** Whether the client has gone (cancelled, deadline, connection closed). */
  readonly closed: boolean;
  /** Resolves when the client has gone. */
  readonly gone: Promise<void>;
}
/** Resolves when the stream is complete (the server ends it); rejects to end it with an error. */
export type StreamHandler = (req: never, sink: StreamSink) => Promise<void>;
export type StreamHandlers = Record<string, StreamHandler>;
