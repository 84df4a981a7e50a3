'use strict';
// gRPC calls to an edgerec server (docs/protocol.md §1-§4, §10, §12) with @grpc/grpc-js; the
// service definitions come from protos/ through @grpc/proto-loader at run time.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const E = require('./errors');
const { PROTO_ROOT, FILES, decode } = require('./protos');

const definition = protoLoader.loadSync(FILES, {
  keepCase: true,
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  includeDirs: [PROTO_ROOT],
});

const STATUS_DEFAULT = {
  [grpc.status.NOT_FOUND]: 'NotFoundError',
  [grpc.status.FAILED_PRECONDITION]: 'UnknownBaseVersionError',
  [grpc.status.INVALID_ARGUMENT]: 'InvalidInputError',
  [grpc.status.OUT_OF_RANGE]: 'InvalidInputError',
  [grpc.status.DATA_LOSS]: 'IntegrityError',
  [grpc.status.UNAUTHENTICATED]: 'AuthenticationError',
  [grpc.status.PERMISSION_DENIED]: 'PermissionDeniedError',
};

/** The error a status maps to (§2): the `edgerec-error` class when the trailers name one. */
function errorFromStatus(err) {
  const named = err.metadata && err.metadata.get('edgerec-error')[0];
  const name = (named && E[named] ? named : null) || STATUS_DEFAULT[err.code] || 'TransportError';
  const out = new (E[name] || E.EdgerecError)(`${grpc.status[err.code]}: ${err.details}`);
  out.code = err.code;
  out.statusName = grpc.status[err.code];
  out.deliberate = Boolean(named);
  out.edgerecError = named || null;
  return out;
}

/** Byte ranges of the top-level length-delimited fields of a protobuf message, by field number. */
function fieldSizes(buf) {
  const sizes = {};
  let pos = 0;
  const varint = () => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = buf[pos++];
      v += (b & 0x7f) * mul;
      if (!(b & 0x80)) return v;
      mul *= 128;
    }
  };
  while (pos < buf.length) {
    const key = varint();
    const wire = key % 8;
    const field = Math.floor(key / 8);
    if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const n = varint();
      sizes[field] = (sizes[field] || 0) + n;
      pos += n;
    } else break;
  }
  return sizes;
}

class Connection {
  constructor(address, { token = null, timeoutS = 30 } = {}) {
    this.address = address;
    this.timeoutS = timeoutS;
    this.token = token;
    const pkg = grpc.loadPackageDefinition(definition);
    const creds = grpc.credentials.createInsecure();
    const options = { 'grpc.max_receive_message_length': 16 * 1024 * 1024 };
    this.update = new pkg.edgerec.v1.ModelUpdate(address, creds, options);
    this.inference = new pkg.edgerec.v1.Inference(address, creds, options);
    this.health = new pkg.grpc.health.v1.Health(address, creds, options);
    this.updateDef = definition['edgerec.v1.ModelUpdate'];
  }

  close() {
    this.update.close();
    this.inference.close();
    this.health.close();
  }

  _metadata() {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  _deadline() {
    return new Date(Date.now() + this.timeoutS * 1000);
  }

  _unary(client, method, request) {
    return new Promise((resolve, reject) => {
      client[method](request, this._metadata(), { deadline: this._deadline() }, (err, res) => {
        if (err) reject(errorFromStatus(err));
        else resolve(res);
      });
    });
  }

  /** grpc.health.v1 Check: the status name ("SERVING", ...). */
  async healthCheck(service = '') {
    const res = await this._unary(this.health, 'Check', { service });
    return res.status;
  }

  /** CheckUpdate; returns {response, sizes: {manifest, freshness}} (encoded lengths of the two signed parts). */
  checkUpdate(request) {
    const def = this.updateDef.CheckUpdate;
    return new Promise((resolve, reject) => {
      this.update.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        (buf) => buf,
        request,
        this._metadata(),
        { deadline: this._deadline() },
        (err, raw) => {
          if (err) return reject(errorFromStatus(err));
          const sizes = fieldSizes(raw);
          const response = decode('edgerec.v1.CheckUpdateResponse', raw);
          const has = (n) => Object.prototype.hasOwnProperty.call(sizes, n);
          if (!has(2)) response.manifest = null;
          if (!has(7)) response.freshness = null;
          return resolve({ response, sizes: { manifest: sizes[2] || 0, freshness: sizes[7] || 0 } });
        },
      );
    });
  }

  /** FetchPayload from `offset`: calls onChunk(chunk) for each chunk (may throw to stop); resolves at the end. */
  fetchPayload(request, onChunk) {
    return new Promise((resolve, reject) => {
      const call = this.update.FetchPayload(request, this._metadata(), { deadline: this._deadline() });
      let failed = null;
      call.on('data', (chunk) => {
        if (failed) return;
        try {
          onChunk(chunk);
        } catch (err) {
          failed = err;
          call.cancel();
        }
      });
      call.on('error', (err) => reject(failed || errorFromStatus(err)));
      call.on('end', () => (failed ? reject(failed) : resolve()));
    });
  }

  predict(request) {
    return this._unary(this.inference, 'Predict', request);
  }
}

module.exports = { Connection, errorFromStatus, fieldSizes, grpc, definitionPath: path.resolve(PROTO_ROOT) };
