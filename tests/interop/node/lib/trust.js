'use strict';
// Trust rules of docs/protocol.md §6 and the manifest format rules of docs/formats.md §9.

const crypto = require('crypto');
const E = require('./errors');
const { decode } = require('./protos');

const MAX_SIGNED_MANIFEST = 4 * 1024 * 1024;
const MAX_SIGNED_FRESHNESS = 16 * 1024;
const CLOCK_SKEW_US = 5n * 60n * 1000000n;
const FRESHNESS_DOMAIN = Buffer.concat([Buffer.from('edgerec-freshness-v1', 'latin1'), Buffer.alloc(1)]);
const MODEL_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** A trusted key from PEM (SubjectPublicKeyInfo) text: {id, key}. */
function loadPublicKey(pem) {
  const key = crypto.createPublicKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new E.TrustError('not an Ed25519 public key');
  const raw = Buffer.from(key.export({ format: 'jwk' }).x, 'base64url');
  return { id: crypto.createHash('sha256').update(raw).digest('hex'), key };
}

/** A trusted key from its raw 32 bytes. */
function rawPublicKey(raw) {
  if (raw.length !== 32) throw new E.TrustError('an Ed25519 public key is 32 bytes');
  const spki = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), raw]);
  const key = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
  return { id: crypto.createHash('sha256').update(raw).digest('hex'), key };
}

/** The signature rules of §6.5 over `message`. */
function checkSignatures(message, signatures, trust) {
  if (!signatures.length) throw new E.SignatureError('no signatures');
  const byId = new Map(trust.keys.map((k) => [k.id, k]));
  const seen = new Set();
  for (const sig of signatures) {
    const key = byId.get(sig.key_id);
    if (!key) continue;
    if (seen.has(key.id)) throw new E.SignatureError(`key ${key.id.slice(0, 12)} signed twice`);
    seen.add(key.id);
    let ok = false;
    try {
      ok = crypto.verify(null, message, key.key, sig.signature);
    } catch {
      ok = false;
    }
    if (!ok) throw new E.SignatureError(`bad signature by key ${key.id.slice(0, 12)}`);
  }
  if (!seen.size) throw new E.UnknownKeyError('no signature by a trusted key');
  if (seen.size < trust.threshold) throw new E.SignatureError(`${seen.size} valid signatures, threshold ${trust.threshold}`);
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$/;

/** RFC 3339 as formats.md §9 accepts it, as microseconds since the epoch (BigInt); null if malformed. */
function parseRfc3339(text) {
  const m = RFC3339.exec(text);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number);
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59) return null;
  const days = new Date(Date.UTC(2000, mo, 0)).getUTCDate(); // days in month `mo` of a leap year
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
  if (d > (mo === 2 && !leap ? 28 : days)) return null;
  let offsetMin = 0;
  const zone = m[8];
  if (zone !== 'Z' && zone !== 'z') {
    const oh = Number(zone.slice(1, 3));
    const om = Number(zone.slice(4, 6));
    if (oh > 23 || om > 59) return null;
    offsetMin = (zone[0] === '-' ? -1 : 1) * (oh * 60 + om);
  }
  const micros = BigInt(((m[7] || '') + '000000').slice(0, 6));
  const date = new Date(0);
  date.setUTCFullYear(y, mo - 1, d);
  date.setUTCHours(h, mi, s, 0);
  return BigInt(date.getTime()) * 1000n + micros - BigInt(offsetMin) * 60000000n;
}

function nowUs() {
  return BigInt(Date.now()) * 1000n;
}

function validPath(p) {
  if (!p || p.includes('\\') || p.includes('\0')) return false;
  return p.split('/').every((c) => c !== '' && c !== '.' && c !== '..');
}

function artifactDigest(files) {
  const lines = files.map((f) => Buffer.from(`${f.path}\t${f.size}\t${f.sha256}\n`, 'utf8'));
  lines.sort(Buffer.compare);
  return crypto.createHash('sha256').update(Buffer.concat(lines)).digest('hex');
}

/** Parse manifest bytes and check the format rules of formats.md §9 (ManifestError). */
function parseManifest(bytes) {
  let m;
  try {
    m = decode('edgerec.v1.Manifest', bytes);
  } catch (err) {
    throw new E.ManifestError(`manifest is not valid protobuf: ${err.message}`);
  }
  const bad = (why) => {
    throw new E.ManifestError(`manifest: ${why}`);
  };
  if (m.format_version !== 1) bad(`format version ${m.format_version}`);
  if (!MODEL_RE.test(m.model)) bad('model name');
  m.version = BigInt(m.version);
  if (m.version < 1n) bad('version below 1');
  if (!m.artifacts.length) bad('no artifacts');
  const recipes = new Set();
  for (const a of m.artifacts) {
    if (recipes.has(a.recipe)) bad(`recipe ${a.recipe} twice`);
    recipes.add(a.recipe);
    const paths = new Set();
    for (const f of a.files) {
      if (!validPath(f.path)) bad(`file path ${JSON.stringify(f.path)}`);
      if (paths.has(f.path)) bad(`file path ${f.path} twice`);
      paths.add(f.path);
      if (!HEX64.test(f.sha256)) bad(`sha256 of ${f.path}`);
      f.size = Number(f.size);
    }
    if (!paths.has(a.entrypoint)) bad('entrypoint is not one of the files');
    if (artifactDigest(a.files) !== a.digest) bad(`digest of ${a.recipe}`);
    let last = 0;
    for (const fb of a.fixed_batches) {
      if (fb.batch_size < 1 || fb.batch_size <= last) bad('fixed batches not ascending');
      last = fb.batch_size;
      if (!paths.has(fb.path)) bad('fixed batch file is not one of the files');
    }
  }
  if (m.expires_at !== '' && parseRfc3339(m.expires_at) === null) bad('expires_at is not RFC 3339');
  return m;
}

/** §6.6 steps 1-6 for a SignedManifest {manifest, signatures}; returns the parsed manifest. */
function verifyManifest(signed, { model, floor, trust, encodedSize, now = nowUs(), reinstallable = null }) {
  if (encodedSize > MAX_SIGNED_MANIFEST) throw new E.ManifestError('signed manifest above 4 MiB');
  if (!trust.insecure) checkSignatures(signed.manifest, signed.signatures, trust);
  const m = parseManifest(signed.manifest);
  if (m.model !== model) throw new E.WrongModelError(`manifest is for model ${m.model}`);
  const again = reinstallable !== null && m.version === BigInt(reinstallable); // §6.7: held back, not installed
  if (m.version <= floor && !again) throw new E.RollbackError(`version ${m.version} is not above ${floor}`);
  if (m.expires_at !== '' && parseRfc3339(m.expires_at) <= now) throw new E.ExpiredError('manifest expired');
  return m;
}

function sameLabels(a, b) {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && b[k] === a[k]);
}

/** §6.4 A: the signed freshness statement against the request sent; returns the statement. */
function verifyFreshness(sf, encodedSize, request, trust, { now = nowUs(), skewUs = CLOCK_SKEW_US } = {}) {
  if (!sf) throw new E.FreshnessError('no freshness statement');
  if (encodedSize > MAX_SIGNED_FRESHNESS) throw new E.FreshnessError('freshness statement above 16 KiB');
  checkSignatures(Buffer.concat([FRESHNESS_DOMAIN, sf.freshness]), sf.signatures, trust);
  let f;
  try {
    f = decode('edgerec.v1.Freshness', sf.freshness);
  } catch (err) {
    throw new E.FreshnessError(`freshness is not valid protobuf: ${err.message}`);
  }
  if (f.model !== request.model || f.device_id !== request.device_id || !Buffer.from(f.nonce).equals(request.nonce)) {
    throw new E.FreshnessError("statement is not this request's (model, device or nonce)");
  }
  const issued = parseRfc3339(f.issued_at);
  const expires = parseRfc3339(f.expires_at);
  if (issued === null || expires === null) throw new E.FreshnessError('times are not RFC 3339');
  if (issued > now + skewUs) throw new E.FreshnessError('issued in the future');
  if (expires <= issued) throw new E.FreshnessError('expires before it was issued');
  if (expires <= now) throw new E.FreshnessError('statement expired');
  const target = BigInt(request.target_version);
  if (BigInt(f.requested_version) !== target) throw new E.StaleAnswerError('statement answers another requested version');
  if (f.channel !== request.channel || f.app_version !== request.app_version || !sameLabels(f.labels, request.labels)) {
    throw new E.StaleAnswerError('statement answers another channel, labels or app version');
  }
  if (target !== 0n && BigInt(f.target_version) !== target) throw new E.StaleAnswerError('statement targets another version');
  f.target_version = BigInt(f.target_version);
  return f;
}

/**
 * §6.4 in order for a CheckUpdate answer: returns {update: false} or {update: true, manifest, artifact}.
 * `sizes` are the encoded lengths of response.manifest and response.freshness.
 */
function verifyAnswer(request, response, sizes, { trust, floor, now = nowUs(), reinstallable = null }) {
  if (!trust.insecure && !trust.keys.length) throw new E.NoTrustedKeysError('no trusted keys');
  const fresh = trust.insecure ? null : verifyFreshness(response.freshness, sizes.freshness, request, trust, { now });
  const current = BigInt(request.current_version);
  if (!response.update_available) {
    if (current === 0n) throw new E.StaleAnswerError('"no update" to a device that runs nothing');
    if (fresh && fresh.target_version !== current) throw new E.StaleAnswerError('"no update" withholds a version');
    return { update: false };
  }
  if (!response.manifest) throw new E.ManifestError('no manifest');
  const m = verifyManifest(response.manifest, { model: request.model, floor, trust, encodedSize: sizes.manifest, now, reinstallable });
  if (fresh && m.version !== fresh.target_version) throw new E.StaleAnswerError('manifest is not the version the statement names');
  const recipes = request.recipes.length ? request.recipes : ['int8', 'fp32'];
  if (!recipes.includes(response.recipe)) throw new E.RecipeNotAllowedError(`recipe ${response.recipe} was not asked for`);
  const artifact = m.artifacts.find((a) => a.recipe === response.recipe);
  if (!artifact) throw new E.ManifestError(`manifest has no ${response.recipe} artifact`);
  const runtimes = request.runtimes.length ? request.runtimes : ['onnxruntime'];
  if (!runtimes.includes(artifact.runtime)) throw new E.RecipeNotAllowedError(`runtime ${artifact.runtime} was not asked for`);
  return { update: true, manifest: m, artifact };
}

/** §6.7: the version floor for a device whose highest activated version is `highest`. */
function versionFloor(highest, currentVersion) {
  const h = BigInt(highest);
  if (BigInt(currentVersion) !== 0n) return h;
  return h > 0n ? h - 1n : 0n;
}

module.exports = {
  FRESHNESS_DOMAIN,
  versionFloor,
  loadPublicKey,
  rawPublicKey,
  checkSignatures,
  parseRfc3339,
  parseManifest,
  verifyManifest,
  verifyFreshness,
  verifyAnswer,
  artifactDigest,
  validPath,
};
