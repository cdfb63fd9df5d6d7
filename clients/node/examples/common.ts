// What the examples share: a client whose channel retries UNAVAILABLE, the bearer token, the
// run's deadline, and unary calls as promises.
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";

import { ExplainServiceClient } from "../src/gen/explainserve/v1/explain";

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

/** Runs an example's main, printing its error and exiting with status 1 when it fails. */
export function run(main: () => Promise<void>): void {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
