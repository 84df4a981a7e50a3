'use strict';
// The edgerec protos, loaded at run time from the repository's protos/ folder (nothing generated).

const path = require('path');
const protobuf = require('protobufjs');

const PROTO_ROOT = process.env.EDGEREC_PROTOS || path.resolve(__dirname, '..', '..', '..', '..', 'protos');
const FILES = [
  'edgerec/v1/update.proto',
  'edgerec/v1/inference.proto',
  'edgerec/v1/telemetry.proto',
  'grpc/health/v1/health.proto',
];

let root = null;

function loadRoot() {
  if (root) return root;
  const r = new protobuf.Root();
  r.resolvePath = (_origin, target) => path.join(PROTO_ROOT, target);
  r.loadSync(FILES, { keepCase: true });
  root = r;
  return root;
}

const OBJECT = { longs: String, bytes: Buffer, defaults: true, arrays: true, objects: true };

/** Parse `bytes` as the message `name` (e.g. "edgerec.v1.Manifest"); uint64 fields become strings. */
function decode(name, bytes) {
  const type = loadRoot().lookupType(name);
  return type.toObject(type.decode(bytes), OBJECT);
}

module.exports = { PROTO_ROOT, FILES, decode, loadRoot };
