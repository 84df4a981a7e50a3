'use strict';
// Runs the conformance vectors of tests/vectors (their format: tests/vectors/README.md) through
// this client's own code: every vector passes when it produces exactly the expected result or
// refuses with exactly the expected error class.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const E = require('./errors');
const codecs = require('./codecs');
const trustLib = require('./trust');
const { checkPlan } = require('./sync');
const { decode } = require('./protos');
const { fieldSizes } = require('./rpc');

function sha256Hex(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

class Runner {
  constructor(dir) {
    this.dir = dir;
    this.index = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
    if (this.index.format !== 'edgerec-conformance-vectors' || this.index.format_version !== 1) {
      throw new Error(`unknown vectors format ${this.index.format} ${this.index.format_version}`);
    }
    this.keys = new Map(this.index.keys.map((k) => [k.name, trustLib.rawPublicKey(Buffer.from(k.public_key_hex, 'hex'))]));
    for (const k of this.index.keys) {
      if (this.keys.get(k.name).id !== k.key_id) throw new Error(`key id of ${k.name} differs from ours`);
    }
  }

  read(rel) {
    return rel === null || rel === undefined ? null : fs.readFileSync(path.join(this.dir, ...rel.split('/')));
  }

  trust(params) {
    const names = params.trusted_keys || [];
    return {
      keys: names.map((n) => this.keys.get(n)),
      threshold: params.threshold || 1,
      insecure: names.length === 0,
    };
  }

  now(params) {
    return params.now ? trustLib.parseRfc3339(params.now) : undefined;
  }

  run(v) {
    const inputs = v.inputs || {};
    const params = v.params || {};
    switch (v.kind) {
      case 'payload':
        return this.payload(inputs, params);
      case 'manifest': {
        const bytes = this.read(inputs.signed_manifest);
        const signed = decode('edgerec.v1.SignedManifest', bytes);
        const m = trustLib.verifyManifest(signed, {
          model: params.model,
          floor: BigInt(params.activated_version || 0),
          trust: this.trust(params),
          encodedSize: bytes.length,
          now: this.now(params),
        });
        return { model: m.model, version: Number(m.version) };
      }
      case 'freshness': {
        const bytes = this.read(inputs.signed_freshness);
        const request = {
          model: params.model,
          device_id: params.device_id,
          nonce: Buffer.from(params.nonce_hex, 'hex'),
          target_version: String(params.target_version || 0),
          channel: params.channel || '',
          labels: params.labels || {},
          app_version: params.app_version || '',
        };
        const f = trustLib.verifyFreshness(decode('edgerec.v1.SignedFreshness', bytes), bytes.length, request, this.trust(params), {
          now: this.now(params),
          skewUs: params.max_clock_skew_s !== undefined ? BigInt(params.max_clock_skew_s) * 1000000n : undefined,
        });
        return { target_version: Number(f.target_version), latest_version: Number(f.latest_version) };
      }
      case 'answer': {
        const request = decode('edgerec.v1.CheckUpdateRequest', this.read(inputs.request));
        const raw = this.read(inputs.response);
        const response = decode('edgerec.v1.CheckUpdateResponse', raw);
        const sizes = fieldSizes(raw);
        if (!(2 in sizes)) response.manifest = null;
        if (!(7 in sizes)) response.freshness = null;
        const verdict = trustLib.verifyAnswer(request, response, { manifest: sizes[2] || 0, freshness: sizes[7] || 0 }, {
          trust: this.trust(params),
          floor: trustLib.versionFloor(params.highest_activated || 0, request.current_version),
          now: this.now(params),
          reinstallable: params.reinstallable ?? null,
        });
        if (!verdict.update) return { update_available: false };
        return { update_available: true, version: Number(verdict.manifest.version), recipe: verdict.artifact.recipe };
      }
      case 'plan': {
        const response = decode('edgerec.v1.CheckUpdateResponse', this.read(inputs.response));
        const manifest = trustLib.parseManifest(response.manifest.manifest);
        const artifact = manifest.artifacts.find((a) => a.recipe === response.recipe);
        if (!artifact) throw new E.ManifestError(`no ${response.recipe} artifact`);
        let current = null;
        const currentBytes = this.read(inputs.current_manifest);
        if (currentBytes) {
          const cm = trustLib.parseManifest(decode('edgerec.v1.SignedManifest', currentBytes).manifest);
          current = { manifest: cm, artifact: cm.artifacts.find((a) => a.recipe === params.current_recipe) };
          if (!current.artifact) current = null;
        }
        const entries = checkPlan(response, artifact, current, params.offered_codecs || [], 0);
        return { entries: entries.map((e) => ({ path: e.file.path, codec: e.payload.codec })) };
      }
      default:
        throw new Error(`unknown vector kind ${v.kind}`);
    }
  }

  payload(inputs, params) {
    const base = this.read(inputs.base);
    let out;
    if (params.codec === 'copy') {
      if (!base) throw new E.IntegrityError('copy without a base file');
      if (base.length !== params.target_size || sha256Hex(base) !== params.target_sha256) throw new E.IntegrityError('copy of another file');
      out = base;
    } else {
      const data = this.read(inputs.payload);
      out = codecs.applyPayload(data, { codec: params.codec, size: params.target_size, sha256: params.target_sha256, base });
    }
    return { output_sha256: sha256Hex(out), output_size: out.length };
  }
}

function same(expect, got) {
  return Object.keys(expect).every((k) => k === 'output' || JSON.stringify(expect[k]) === JSON.stringify(got[k]));
}

/** Run every vector in `dir`; returns {results: [{id, kind, passed, expected, got}]}. */
async function runVectors(dir, log = () => {}) {
  const runner = new Runner(dir);
  const results = [];
  for (const v of runner.index.vectors) {
    let got;
    try {
      got = runner.run(v);
    } catch (err) {
      if (!(err instanceof E.EdgerecError)) log({ vector: v.id, crash: String(err.stack || err) });
      got = { error: err instanceof E.EdgerecError ? err.name : `crash: ${err.message}`, message: err.message };
    }
    const passed = v.expect.error !== undefined ? got.error === v.expect.error : got.error === undefined && same(v.expect, got);
    results.push({ id: v.id, kind: v.kind, passed, expected: v.expect, got });
  }
  return { count: results.length, passed: results.filter((r) => r.passed).length, results };
}

module.exports = { runVectors };
