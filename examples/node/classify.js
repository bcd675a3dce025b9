#!/usr/bin/env node
// Classify image files with a running onnx-serve, over its Classify gRPC API, from Node.js.
//
//   cd examples/node && npm install && cd ../..
//   node examples/node/classify.js 127.0.0.1:8001 examples/digits/*.png
//
// The service definition is read at run time from the repository's protos/ (no generated code), with
// @grpc/proto-loader; the encoded files are sent as they are and the server decodes and preprocesses them.
// Options come from the environment: MODEL (default mnist-cnn), TOP_K (default: the model's configured one).
// Exit status: 0 every image classified, 1 some image failed, 2 bad usage or the server unusable.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const definition = protoLoader.loadSync("onnxserve/v1/classify.proto", {
  includeDirs: [PROTOS], keepCase: true, longs: Number, enums: String, defaults: true,
});
const { ImageClassifier } = grpc.loadPackageDefinition(definition).onnxserve.v1;

function classify(client, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    client.Classify(request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function main(argv) {
  const [address, ...images] = argv;
  if (!address || images.length === 0) {
    console.error("usage: node classify.js HOST:PORT IMAGE...");
    return 2;
  }
  const model = process.env.MODEL || "mnist-cnn";
  const topK = Number(process.env.TOP_K || 0); // 0: the model's configured top_k
  const client = new ImageClassifier(address, grpc.credentials.createInsecure());
  let failed = 0;
  try {
    for (const image of images) {
      let encoded;
      try {
        encoded = fs.readFileSync(image);
      } catch (error) {
        console.error(`${image}: ${error.message}`);
        failed += 1;
        continue;
      }
      try {
        // One image per request, so that a bad file fails alone.
        const response = await classify(client, { model_name: model, images: [{ encoded }], top_k: topK });
        console.log(image);
        for (const { label, index, score } of response.results[0].predictions) {
          const shown = score >= 1e-3 ? score.toPrecision(4) : score.toExponential(3); // 4 significant digits
          console.log(`  ${shown.padStart(10)}  ${String(index).padStart(4)}  ${label}`);
        }
      } catch (error) {
        const code = grpc.status[error.code] || error.code;
        console.error(`${image}: ${error.details || error.message} (${code})`);
        if (error.code !== grpc.status.INVALID_ARGUMENT) return 2; // the server or the model, not this image
        failed += 1;
      }
    }
  } finally {
    client.close();
  }
  return failed ? 1 : 0;
}

main(process.argv.slice(2)).then((status) => { process.exitCode = status; });
