// Asks an ExplainServe server which concepts of a concept set drive a model's prediction for each
// sentence (ExplainConcepts) and prints the strongest ones.
//
//   npm run concepts -- --target 127.0.0.1:50051 --concepts pca8 "The food was cold." "Lovely!"
//
// Per input it prints "input N: TEXT", the predicted class, the explained class (the predicted
// one), the residual (the share of the output the concepts do not reconstruct), then the --top
// concepts by absolute contribution, one line each: the concept's label, a tab, its signed
// contribution (normalized: the absolute contributions of all concepts sum to 1; the float32
// value). Without --concepts it uses the model's first concept set, as GetModel lists them. Set
// EXPLAINSERVE_TOKEN when the server wants a bearer token.
import { parseArgs } from "node:util";

import { ExplainConceptsRequest, type Matrix } from "../src/gen/explainserve/v1/explain";
import { call, commonOptions, run, withSession } from "./common";

/** Sums a row-major [rows, concepts] matrix over its rows (one row at the head's input). */
function perConcept(matrix: Matrix | undefined): number[] {
  const out = new Array<number>(matrix?.cols ?? 0).fill(0);
  (matrix?.values ?? []).forEach((v, i) => (out[i % out.length] += v));
  return out.map(Math.fround);
}

/** The indices of the `n` values of largest magnitude, largest first (ties in index order). */
function strongest(values: number[], n: number): number[] {
  // Array.prototype.sort is stable, so equal magnitudes keep their index order.
  return values
    .map((_, i) => i)
    .sort((a, b) => Math.abs(values[b]) - Math.abs(values[a]))
    .slice(0, n);
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: {
      ...commonOptions,
      concepts: { type: "string" },
      top: { type: "string", default: "3" },
    },
    allowPositionals: true,
  });
  if (positionals.length === 0) {
    throw new Error(
      "usage: concepts [--target host:port] [--model name] [--concepts set] [--top N] TEXT...",
    );
  }
  const model = values.model;
  await withSession(values.target, model, Number(values["timeout-ms"]), async (session) => {
    const { client, metadata, deadline } = session;
    const name = values.concepts ?? session.model.conceptSets[0]?.name;
    if (name === undefined) {
      throw new Error(`model ${model} serves no concept set (explainserve serve --concepts)`);
    }
    const reply = await call(
      client.explainConcepts.bind(client),
      ExplainConceptsRequest.fromPartial({
        model,
        inputs: positionals.map((text) => ({ text })),
        concepts: { name },
      }),
      metadata,
      deadline,
    );
    const classes = session.model.labels;
    for (const e of reply.explanations) {
      // No targets were asked for: the one target is the predicted class.
      const t = e.targets[0];
      const predicted = e.logits.indexOf(Math.max(...e.logits));
      console.log(`input ${e.inputIndex}: ${e.text}`);
      console.log(`predicted: ${classes[predicted]}`);
      console.log(`explained: ${t.target?.label}`);
      console.log(`residual: ${Math.fround(t.residual)}`);
      const contributions = perConcept(t.contributions);
      for (const k of strongest(contributions, Number(values.top))) {
        console.log(`${reply.conceptLabels[k]}\t${contributions[k]}`);
      }
    }
  });
}

run(main);
