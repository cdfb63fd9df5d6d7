// What the examples share: their common options, a client whose channel retries UNAVAILABLE, the
// bearer token, the run's deadline, the model's metadata, and unary calls as promises.
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";

import {
  ExplainServiceClient,
  GetModelRequest,
  ModelInfo,
} from "../src/gen/explainserve/v1/explain";

/** The options of every example (node:util's parseArgs): the server, the model, the deadline. */
export const commonOptions = {
  target: { type: "string", default: "127.0.0.1:50051" },
  model: { type: "string", default: "minilm-sentiment" },
  "timeout-ms": { type: "string", default: "120000" },
} as const;

// Retries UNAVAILABLE (the server loading its models or draining, a dropped connection): every
// ExplainService method is read-only, so a retry is safe. The Python client's RETRY_POLICY.
export const serviceConfig = {
  methodConfig: [
    {
      name: [{ service: "explainserve.v1.ExplainService" }],
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: "0.2s",
        maxBackoff: "2s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
};

/** A plaintext client of `target` (host:port) with `serviceConfig`; close it when done. */
export function connect(target: string): ExplainServiceClient {
  return new ExplainServiceClient(target, credentials.createInsecure(), {
    "grpc.service_config": JSON.stringify(serviceConfig),
  });
}

/** The calls' metadata: EXPLAINSERVE_TOKEN as a bearer token, when it is set. */
export function authMetadata(): Metadata {
  const metadata = new Metadata();
  const token = process.env.EXPLAINSERVE_TOKEN;
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  return metadata;
}

/** Calls a callback-style unary method of the generated client as a promise. */
export function call<Req, Res>(
  method: (
    request: Req,
    metadata: Metadata,
    options: { deadline: Date },
    callback: (error: ServiceError | null, response: Res) => void,
  ) => unknown,
  request: Req,
  metadata: Metadata,
  deadline: Date,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** An example's connection to the server. */
export interface Session {
  client: ExplainServiceClient;
  /** The calls' metadata and the run's deadline: pass them to `call`. */
  metadata: Metadata;
  deadline: Date;
  /** The model's metadata (GetModel). */
  model: ModelInfo;
}

/**
 * Connects to `target` (host:port), starts the run's deadline of `timeoutMs` and asks for
 * `model`'s metadata, then runs `body` on the session; the client is closed after it.
 */
export async function withSession(
  target: string,
  model: string,
  timeoutMs: number,
  body: (session: Session) => Promise<void>,
): Promise<void> {
  const client = connect(target);
  try {
    const metadata = authMetadata();
    const deadline = new Date(Date.now() + timeoutMs);
    const reply = await call(
      client.getModel.bind(client),
      GetModelRequest.fromPartial({ name: model }),
      metadata,
      deadline,
    );
    await body({ client, metadata, deadline, model: reply.model ?? ModelInfo.fromPartial({}) });
  } finally {
    client.close();
  }
}

/** Runs an example's main, printing its error and exiting with status 1 when it fails. */
export function run(main: () => Promise<void>): void {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
