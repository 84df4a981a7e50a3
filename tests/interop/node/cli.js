#!/usr/bin/env node
'use strict';
// edgerec-node: a device client in Node.js, for interoperability tests. Every command prints one
// JSON object on stdout: {"ok": true, ...} or {"ok": false, "error": <class>, "message": ...}
// (exit status 2). Progress events go to stderr as JSON lines.
//
//   cli.js health  --server H:P
//   cli.js sync    --server H:P --model M --data-dir D (--trusted-key PEM ... | --insecure)
//                  [--codecs full,tensor] [--recipes fp32] [--target-version N] [--budget BYTES]
//                  [--stop-after-bytes N] [--chunk-bytes N] [--device-id ID] [--token T]
//   cli.js predict --server H:P --model M --inputs FILE.json [--version N] [--recipe R]
//   cli.js vectors --dir tests/vectors

const fs = require('fs');
const { Connection } = require('./lib/rpc');
const { sync } = require('./lib/sync');
const trustLib = require('./lib/trust');
const zstd = require('./lib/zstd');
const { encodeTensor, decodeTensor } = require('./lib/tensors');

function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      args._.push(a);
      continue;
    }
    const key = a.slice(2);
    if (key === 'insecure') {
      args.insecure = true;
      continue;
    }
    const value = argv[++i];
    if (key === 'trusted-key') (args.trustedKey = args.trustedKey || []).push(value);
    else args[key.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = value;
  }
  return args;
}

const log = (event) => process.stderr.write(`${JSON.stringify(event)}\n`);

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const command = args._[0];
  await zstd.ready();
  if (command === 'vectors') {
    const { runVectors } = require('./lib/vectors');
    return runVectors(args.dir, log);
  }
  const conn = new Connection(args.server, { token: args.token || null, timeoutS: Number(args.timeout || 30) });
  try {
    if (command === 'health') {
      const services = ['', 'edgerec.v1.ModelUpdate', 'edgerec.v1.Inference', 'edgerec.v1.Telemetry'];
      const status = {};
      for (const s of services) status[s || '(server)'] = await conn.healthCheck(s);
      return { status };
    }
    if (command === 'sync') {
      const keys = (args.trustedKey || []).map((f) => trustLib.loadPublicKey(fs.readFileSync(f, 'utf8')));
      const trust = { keys, threshold: Number(args.threshold || 1), insecure: Boolean(args.insecure) };
      return await sync(
        conn,
        {
          model: args.model,
          dataDir: args.dataDir,
          trust,
          codecs: (args.codecs || 'full,tensor,zstd-patch-from,bsdiff4').split(','),
          recipes: (args.recipes || 'fp32').split(','),
          targetVersion: args.targetVersion || 0,
          budget: Number(args.budget || 0),
          deviceId: args.deviceId || '',
          stopAfterBytes: args.stopAfterBytes != null ? Number(args.stopAfterBytes) : null,
          chunkBytes: Number(args.chunkBytes || 0),
        },
        log,
      );
    }
    if (command === 'predict') {
      const spec = JSON.parse(fs.readFileSync(args.inputs, 'utf8'));
      const inputs = {};
      for (const [name, t] of Object.entries(spec)) inputs[name] = encodeTensor(t.dtype, t.shape, t.values);
      const res = await conn.predict({
        model: args.model,
        version: String(args.version || 0),
        inputs,
        recipe: args.recipe || '',
        device_id: args.deviceId || '',
      });
      const outputs = {};
      for (const [name, t] of Object.entries(res.outputs)) outputs[name] = decodeTensor(t);
      return { version: res.version, recipe: res.recipe, scores: res.scores, outputs };
    }
    throw new Error(`unknown command ${command}`);
  } finally {
    conn.close();
  }
}

main().then(
  (result) => {
    process.stdout.write(`${JSON.stringify({ ok: true, ...result })}\n`);
    process.exit(0);
  },
  (err) => {
    process.stdout.write(`${JSON.stringify({ ok: false, error: err.name || 'Error', message: String(err.message || err), status: err.statusName || null })}\n`);
    process.exit(2);
  },
);
