'use strict';
// A device's sync (docs/protocol.md §9): ask, verify (§6), check the unsigned plan (§7), download
// resumably (§4, §5), apply (formats.md §7), verify the staged files, activate atomically.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');
const E = require('./errors');
const codecs = require('./codecs');
const trustLib = require('./trust');

const HEX64 = /^[0-9a-f]{64}$/;
const MAX_URLS = 4;
const MAX_URL_BYTES = 2048;

function sha256Hex(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

function fsyncWrite(file, data) {
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function fsyncDir(dir) {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The device's folder: state.json (active version, highest version ever activated), versions/, payloads/. */
class Store {
  constructor(root) {
    this.root = root;
    this.payloads = path.join(root, 'payloads');
    this.versions = path.join(root, 'versions');
    this.staging = path.join(root, 'staging');
    for (const d of [root, this.payloads, this.versions, this.staging]) fs.mkdirSync(d, { recursive: true });
  }

  readState() {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.root, 'state.json'), 'utf8'));
    } catch (err) {
      if (err.code === 'ENOENT') return { highest: '0', active: null };
      throw err;
    }
  }

  writeState(state) {
    const tmp = path.join(this.root, 'state.json.tmp');
    fsyncWrite(tmp, JSON.stringify(state, null, 1));
    fs.renameSync(tmp, path.join(this.root, 'state.json'));
    fsyncDir(this.root);
  }

  /** The active version if its files still match its verified manifest: {version, recipe, dir, manifest, artifact}. */
  current() {
    const state = this.readState();
    if (!state.active) return null;
    const a = state.active;
    const manifest = trustLib.parseManifest(Buffer.from(a.manifest, 'base64'));
    const artifact = manifest.artifacts.find((x) => x.recipe === a.recipe);
    const dir = path.join(this.versions, a.dir);
    for (const f of artifact.files) {
      let data;
      try {
        data = fs.readFileSync(path.join(dir, f.path));
      } catch {
        return null;
      }
      if (data.length !== f.size || sha256Hex(data) !== f.sha256) return null;
    }
    return { version: manifest.version, recipe: a.recipe, dir, manifest, artifact };
  }
}

/** §5: at most 2048 bytes of printable ASCII; http(s) with a host, a port 0-65535 if any, no user info. */
function validUrl(url) {
  if (Buffer.byteLength(url) > MAX_URL_BYTES || !/^[!-~]*$/.test(url)) return false;
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)/.exec(url);
  if (!m || !['http', 'https'].includes(m[1].toLowerCase())) return false;
  const netloc = m[2];
  if (netloc.includes('@')) return false;
  const hp = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(netloc);
  if (!hp || hp[1] === '' || hp[1] === '[]') return false;
  if (hp[2] !== undefined && hp[2] !== '' && !(/^[0-9]+$/.test(hp[2]) && Number(hp[2]) <= 65535)) return false;
  return true;
}

/** §7: the unsigned plan against the signed artifact; returns the entries in manifest file order. */
function checkPlan(response, artifact, current, offeredCodecs, budget) {
  const bad = (why) => {
    throw new E.ManifestError(`plan: ${why}`);
  };
  const byPath = new Map();
  for (const p of response.payloads) {
    if (byPath.has(p.path)) bad(`${p.path} twice`);
    byPath.set(p.path, p);
  }
  const signedPaths = new Set(artifact.files.map((f) => f.path));
  for (const p of byPath.keys()) if (!signedPaths.has(p)) bad(`${p} is not a file of the signed artifact`);
  const baseFiles = current ? new Map(current.artifact.files.map((f) => [f.path, f])) : new Map();
  const entries = [];
  let total = 0;
  for (const file of artifact.files) {
    const p = byPath.get(file.path);
    if (!p) bad(`no entry for ${file.path}`);
    if (p.target_sha256 !== file.sha256 || Number(p.target_size) !== file.size) bad(`${file.path}: target differs from the signed file`);
    const size = Number(p.size);
    if (p.codec === 'copy') {
      if (p.payload_id !== '' || p.sha256 !== '' || size !== 0) bad(`${file.path}: copy with a payload`);
    } else {
      if (p.codec !== 'full' && !offeredCodecs.includes(p.codec)) bad(`${file.path}: codec ${p.codec} was not offered`);
      if (!codecs.CODECS.includes(p.codec)) bad(`${file.path}: unknown codec ${p.codec}`);
      if (!HEX64.test(p.payload_id) || p.sha256 !== p.payload_id) bad(`${file.path}: payload id`);
      if (size < codecs.HEADER + codecs.TRAILER || size > codecs.payloadBound(p.codec, file.size)) bad(`${file.path}: payload size ${size}`);
      total += size;
    }
    let base = null;
    if (p.codec === 'full') {
      if (p.base_path !== '' || p.base_sha256 !== '') bad(`${file.path}: full with a base`);
    } else {
      if (!current) bad(`${file.path}: ${p.codec} needs a base and the device runs nothing verified`);
      base = baseFiles.get(p.base_path);
      if (!base || base.sha256 !== p.base_sha256) bad(`${file.path}: base ${p.base_path} is not a verified file of the active version`);
      if (p.codec === 'copy' && (base.sha256 !== file.sha256 || base.size !== file.size)) bad(`${file.path}: copy of another file`);
    }
    const maxUrls = p.codec === 'copy' ? 0 : MAX_URLS;
    if (p.urls.length > maxUrls || !p.urls.every(validUrl)) bad(`${file.path}: urls`);
    entries.push({ file, payload: p, size, base });
  }
  if (budget && total > budget) throw new E.PayloadBudgetError(`plan needs ${total} bytes, budget ${budget}`);
  return entries;
}

/**
 * Download one payload into payloads/<id>, resuming from payloads/<id>.part (§4.1, §5).
 * `opts.stopAfterBytes` cuts the download after that many bytes of this run (to test resuming).
 */
async function download(conn, store, model, deviceId, entry, opts, log) {
  const p = entry.payload;
  const done = path.join(store.payloads, p.payload_id);
  if (fs.existsSync(done)) {
    const data = fs.readFileSync(done);
    if (data.length === entry.size && sha256Hex(data) === p.sha256) return data;
    fs.rmSync(done);
  }
  const part = `${done}.part`;
  for (let attempt = 0; attempt < 2; attempt++) {
    let have = fs.existsSync(part) ? fs.statSync(part).size : 0;
    if (have > entry.size) {
      fs.rmSync(part);
      have = 0;
    }
    const resumed = have > 0;
    log({ event: 'download', payload_id: p.payload_id, codec: p.codec, offset: have, size: entry.size });
    const fd = fs.openSync(part, have ? 'r+' : 'w');
    try {
      have = await fetchInto(conn, fd, have, model, deviceId, entry, opts);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    const data = fs.readFileSync(part);
    if (data.length === entry.size && sha256Hex(data) === p.sha256) {
      fs.renameSync(part, done);
      return data;
    }
    fs.rmSync(part);
    if (!resumed) break;
  }
  throw new E.IntegrityError(`payload ${p.payload_id} does not match its sha256`);
}

async function fetchInto(conn, fd, have, model, deviceId, entry, opts) {
  const p = entry.payload;
  let cutAt = opts.stopAfterBytes != null ? have + opts.stopAfterBytes : Infinity;
  for (const url of p.urls) {
    try {
      return await httpInto(url, fd, have, entry, cutAt);
    } catch (err) {
      if (err instanceof E.InterruptedError) throw err;
      have = fs.fstatSync(fd).size;
      // Bytes that came over HTTP are checked with the whole file: fall back to FetchPayload from here.
    }
  }
  for (let attempt = 0; ; attempt++) {
    try {
      await conn.fetchPayload(
        { model, payload_id: p.payload_id, offset: String(have), max_chunk_bytes: opts.chunkBytes || 0, device_id: deviceId },
        (chunk) => {
          const offset = Number(chunk.offset);
          const data = chunk.data;
          if (offset !== have) throw new E.IntegrityError('chunk at the wrong offset');
          if (Number(chunk.total_size) !== entry.size) throw new E.IntegrityError('chunk total size differs from the plan');
          if (data.length > entry.size - have) throw new E.IntegrityError('chunk past the payload size');
          if (codecs.crc32(data) !== chunk.crc32) throw new E.IntegrityError('chunk CRC-32 mismatch');
          let piece = data;
          if (have + piece.length > cutAt) piece = piece.subarray(0, cutAt - have);
          fs.writeSync(fd, piece, 0, piece.length, have);
          have += piece.length;
          if (have >= cutAt) {
            fs.fsyncSync(fd);
            throw new E.InterruptedError(`download cut at ${have} bytes`);
          }
        },
      );
      return have;
    } catch (err) {
      if (err instanceof E.IntegrityError) {
        fs.ftruncateSync(fd, 0);
        throw err;
      }
      // A status without edgerec-error is not a refusal (§2): resume from the bytes we have.
      if (err.deliberate || err instanceof E.InterruptedError || attempt >= 5 || err.code === undefined) throw err;
      cutAt = Infinity;
      await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
    }
  }
}

function httpInto(url, fd, have, entry, cutAt) {
  return new Promise((resolve, reject) => {
    const lib = url.startsWith('https:') ? https : url.startsWith('http:') ? http : null;
    if (!lib) return reject(new Error('not an HTTP URL'));
    const headers = have ? { Range: `bytes=${have}-` } : {};
    const req = lib.get(url, { headers, timeout: 30000 }, (res) => {
      const okStatus = have ? res.statusCode === 206 : res.statusCode === 200;
      if (!okStatus) {
        res.resume();
        return reject(new Error(`HTTP ${res.statusCode}`));
      }
      let at = have;
      res.on('data', (buf) => {
        if (buf.length > entry.size - at) {
          req.destroy();
          return reject(new Error('HTTP body past the payload size'));
        }
        let piece = buf;
        if (at + piece.length > cutAt) piece = piece.subarray(0, cutAt - at);
        fs.writeSync(fd, piece, 0, piece.length, at);
        at += piece.length;
        if (at >= cutAt) {
          req.destroy();
          reject(new E.InterruptedError(`download cut at ${at} bytes`));
        }
      });
      res.on('end', () => (res.complete ? resolve(at) : reject(new Error('HTTP body cut short'))));
      res.on('close', () => reject(new Error('HTTP connection closed')));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('HTTP timeout')));
  });
}

/** One sync against `conn` for `opts.model`; returns a summary object. */
async function sync(conn, opts, log = () => {}) {
  const store = new Store(opts.dataDir);
  const trust = opts.trust;
  const deviceId = opts.deviceId || '';
  let current = store.current();
  const offered = ['full', ...opts.codecs.filter((c) => c !== 'full')];
  let fallback = false;
  for (;;) {
    const state = store.readState();
    const highest = BigInt(state.highest || '0');
    const request = {
      model: opts.model,
      current_version: current ? String(current.version) : '0',
      current_sha256: current ? current.artifact.digest : '',
      current_recipe: current ? current.recipe : '',
      runtimes: opts.runtimes || ['onnxruntime'],
      codecs: fallback ? ['full'] : offered,
      recipes: opts.recipes || ['fp32'],
      target_version: String(opts.targetVersion || 0),
      device_id: deviceId,
      max_payload_bytes: String(opts.budget || 0),
      nonce: crypto.randomBytes(16),
      channel: '',
      labels: {},
      app_version: '',
    };
    let answer;
    try {
      answer = await conn.checkUpdate(request);
    } catch (err) {
      if (err instanceof E.UnknownBaseVersionError && current) {
        current = null;
        continue;
      }
      throw err;
    }
    const { response, sizes } = answer;
    const floor = trustLib.versionFloor(highest, request.current_version);
    const verdict = trustLib.verifyAnswer(request, response, sizes, { trust, floor });
    if (!verdict.update) return { updated: false, version: current ? String(current.version) : null };
    const entries = checkPlan(response, verdict.artifact, current, request.codecs, opts.budget);
    try {
      return await install(conn, store, opts, deviceId, verdict, entries, current, response, log);
    } catch (err) {
      const deltaFailed = err instanceof E.PatchError || err instanceof E.IntegrityError;
      if (!deltaFailed || fallback || !entries.some((e) => !['full', 'copy'].includes(e.payload.codec))) throw err;
      log({ event: 'delta-failed', error: err.name, message: err.message });
      fallback = true;
      current = null;
    }
  }
}

async function install(conn, store, opts, deviceId, verdict, entries, current, response, log) {
  const { manifest, artifact } = verdict;
  const stage = fs.mkdtempSync(path.join(store.staging, `v${manifest.version}-`));
  const report = { updated: true, version: String(manifest.version), recipe: artifact.recipe, files: [] };
  try {
    for (const entry of entries) {
      const { file, payload } = entry;
      const dest = path.join(stage, ...file.path.split('/'));
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      let out;
      const base = entry.base ? fs.readFileSync(path.join(current.dir, ...entry.base.path.split('/'))) : null;
      if (payload.codec === 'copy') {
        out = base;
      } else {
        const data = await download(conn, store, opts.model, deviceId, entry, opts, log);
        try {
          out = codecs.applyPayload(data, { codec: payload.codec, size: file.size, sha256: file.sha256, base });
        } catch (err) {
          fs.rmSync(path.join(store.payloads, payload.payload_id), { force: true });
          throw err;
        }
      }
      if (out.length !== file.size || sha256Hex(out) !== file.sha256) throw new E.IntegrityError(`${file.path} does not match the manifest`);
      fsyncWrite(dest, out);
      report.files.push({ path: file.path, codec: payload.codec, payload_bytes: entry.size, size: file.size });
    }
    for (const file of artifact.files) {
      const data = fs.readFileSync(path.join(stage, ...file.path.split('/')));
      if (data.length !== file.size || sha256Hex(data) !== file.sha256) throw new E.IntegrityError(`${file.path} changed in staging`);
    }
    fsyncDir(stage);
    const name = `${manifest.version}-${artifact.recipe}-${crypto.randomBytes(4).toString('hex')}`;
    fs.renameSync(stage, path.join(store.versions, name));
    fsyncDir(store.versions);
    const state = store.readState();
    const highest = BigInt(state.highest || '0');
    const previous = state.active;
    store.writeState({
      highest: String(manifest.version > highest ? manifest.version : highest),
      active: {
        dir: name,
        recipe: artifact.recipe,
        version: String(manifest.version),
        manifest: Buffer.from(response.manifest.manifest).toString('base64'),
      },
    });
    if (previous) fs.rmSync(path.join(store.versions, previous.dir), { recursive: true, force: true });
    for (const entry of entries) {
      if (entry.payload.codec !== 'copy') fs.rmSync(path.join(store.payloads, entry.payload.payload_id), { force: true });
    }
    report.dir = path.join(store.versions, name);
    return report;
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}

module.exports = { sync, checkPlan, Store };
