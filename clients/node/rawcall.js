// One unary gRPC call with @grpc/grpc-js's default client settings; prints the status it gets:
// "CODE <number> <message bytes>". The request is a serialized protobuf message read from a file,
// so no generated code is needed (the tests build the bytes in Python).
//
//   node rawcall.js HOST:PORT /package.Service/Method request.bin
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");

const [address, method, file] = process.argv.slice(2);
if (!file) {
  console.error("usage: node rawcall.js HOST:PORT /package.Service/Method request.bin");
  process.exit(2);
}
const client = new grpc.Client(address, grpc.credentials.createInsecure());
const identity = (b) => b;
client.makeUnaryRequest(
  method,
  identity,
  identity,
  fs.readFileSync(file),
  { deadline: Date.now() + 30000 },
  (err) => {
    const code = err ? err.code : grpc.status.OK;
    const message = err ? err.details || "" : "";
    console.log(`CODE ${code} ${Buffer.byteLength(message)}`);
    client.close();
  },
);
