// Loader for the CRI v1 API (cri-api/api.proto).
//
// The .proto file is read at runtime (no codegen). It is looked up relative to
// the package root so that the same code works from ts-jest (cri-api/index.ts)
// and from compiled output (dist/cri-api/index.js).

import * as fs from 'fs';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** Walk up from `start` until a directory containing cri-api/api.proto is found. */
function findProtoPath(start: string): string {
  let dir = path.resolve(start);
  for (;;) {
    const candidate = path.join(dir, 'cri-api', 'api.proto');
    if (fs.existsSync(candidate)) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) {
      throw new Error(`cri-api/api.proto not found in ${start} or any parent directory`);
    }
    dir = parent;
  }
}

/** Absolute path of the CRI v1 api.proto. */
export const PROTO_PATH: string = findProtoPath(__dirname);

/**
 * proto-loader options used everywhere in podvisor:
 * - keepCase: JS objects use the proto field names (snake_case), e.g. `pod_sandbox_id`;
 * - longs: String: int64/uint64 values are decimal strings (e.g. `created_at: "1700000000000000000"`);
 * - enums: String: enum values are their names (e.g. `state: "SANDBOX_READY"`);
 * - defaults: missing scalar fields are filled with their zero value on decode;
 * - oneofs: virtual oneof name properties are set (the CRI has no oneofs today).
 */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** Fully-qualified service names, also the gRPC path prefixes (`/runtime.v1.RuntimeService/Version`). */
export const RUNTIME_SERVICE_NAME = 'runtime.v1.RuntimeService';
export const IMAGE_SERVICE_NAME = 'runtime.v1.ImageService';

export interface LoadedCri {
  /** Service definition to pass to `server.addService` for RuntimeService. */
  runtime: grpc.ServiceDefinition;
  /** Service definition to pass to `server.addService` for ImageService. */
  image: grpc.ServiceDefinition;
  /** Generic client constructor for RuntimeService (tests, tools). */
  RuntimeServiceClient: grpc.ServiceClientConstructor;
  /** Generic client constructor for ImageService (tests, tools). */
  ImageServiceClient: grpc.ServiceClientConstructor;
  /** The raw proto-loader package definition (all messages and services). */
  packageDefinition: protoLoader.PackageDefinition;
}

let cached: LoadedCri | undefined;

/** Load (once) and return the CRI service definitions and client constructors. */
export function loadCri(): LoadedCri {
  if (cached) return cached;
  const packageDefinition = protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS);
  const loaded = grpc.loadPackageDefinition(packageDefinition);
  const runtimeV1 = (loaded.runtime as grpc.GrpcObject | undefined)?.v1 as grpc.GrpcObject | undefined;
  if (!runtimeV1) throw new Error(`package runtime.v1 missing from ${PROTO_PATH}`);
  const RuntimeServiceClient = runtimeV1.RuntimeService as grpc.ServiceClientConstructor | undefined;
  const ImageServiceClient = runtimeV1.ImageService as grpc.ServiceClientConstructor | undefined;
  if (!RuntimeServiceClient?.service || !ImageServiceClient?.service) {
    throw new Error(`RuntimeService/ImageService missing from ${PROTO_PATH}`);
  }
  cached = {
    runtime: RuntimeServiceClient.service,
    image: ImageServiceClient.service,
    RuntimeServiceClient,
    ImageServiceClient,
    packageDefinition,
  };
  return cached;
}

// The RPC name as declared in the .proto (e.g. "RunPodSandbox"), taken from the
// method path "/runtime.v1.RuntimeService/RunPodSandbox". Note that proto-loader's
// `originalName` is the lowerCamelCase alias ("runPodSandbox"), not the proto name.
function rpcName(key: string, m: grpc.MethodDefinition<unknown, unknown>): string {
  const slash = m.path.lastIndexOf('/');
  return slash >= 0 ? m.path.slice(slash + 1) : key;
}

function methodNames(def: grpc.ServiceDefinition): string[] {
  return Object.entries(def).map(([key, m]) => rpcName(key, m));
}

function streamingNames(def: grpc.ServiceDefinition): string[] {
  return Object.entries(def)
    .filter(([, m]) => m.responseStream && !m.requestStream)
    .map(([key, m]) => rpcName(key, m));
}

/** RPC names of RuntimeService, in proto declaration order. */
export const RUNTIME_METHODS: string[] = methodNames(loadCri().runtime);

/** RPC names of ImageService, in proto declaration order. */
export const IMAGE_METHODS: string[] = methodNames(loadCri().image);

/** Names of the server-streaming RPCs (both services; the names are unique across them). */
export const STREAMING_METHODS: Set<string> = new Set([
  ...streamingNames(loadCri().runtime),
  ...streamingNames(loadCri().image),
]);
