// Explains one sentence with an ExplainServe server and prints each word's score.
//
//   npm run explain -- --target 127.0.0.1:50051 "The food was cold."
//
// It prints the model's prediction, the explained class, then one line per unit: its text, a tab,
// its score (the float32 value). Set EXPLAINSERVE_TOKEN when the server wants a bearer token.
import { parseArgs } from "node:util";

import { ExplainRequest, Granularity } from "../src/gen/explainserve/v1/explain";
import { call, commonOptions, run, withSession } from "./common";

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: commonOptions,
    allowPositionals: true,
  });
  if (positionals.length !== 1) {
    throw new Error("usage: explain [--target host:port] [--model name] TEXT");
  }
  const model = values.model;
  await withSession(values.target, model, Number(values["timeout-ms"]), async (session) => {
    const { client, metadata, deadline } = session;
    const reply = await call(
      client.explain.bind(client),
      ExplainRequest.fromPartial({
        model,
        inputs: [{ text: positionals[0] }],
        occlusion: {},
        granularity: Granularity.GRANULARITY_WORD,
      }),
      metadata,
      deadline,
    );
    const e = reply.explanations[0];
    const peak = Math.max(...e.logits);
    const exp = e.logits.map((l) => Math.exp(l - peak));
    const sum = exp.reduce((a, b) => a + b, 0);
    const predicted = exp.indexOf(Math.max(...exp));
    const labels = session.model.labels;
    console.log(`predicted: ${labels[predicted]} (${(exp[predicted] / sum).toFixed(3)})`);
    console.log(`explained: ${e.targets[0].label}`);
    // scores is row-major targets x units; one target, so row 0 is the first units.length values.
    const scores = e.scores?.values ?? [];
    e.units.forEach((unit, i) => console.log(`${unit.text}\t${Math.fround(scores[i])}`));
  });
}

run(main);
