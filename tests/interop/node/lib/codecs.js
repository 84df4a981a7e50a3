'use strict';
// The ERPATCH payload container (formats.md §1), each codec's size bound (§6) and applying a payload (§7).

const crypto = require('crypto');
const { PatchError, IntegrityError, WrongBaseError } = require('./errors');
const zstd = require('./zstd');
const { applyTensor } = require('./tensor');
const { applyBsdiff } = require('./bsdiff');

const HEADER = 96;
const TRAILER = 32;
const MAGIC = Buffer.from('ERPATCH\0', 'latin1');
const CODEC_IDS = { 1: 'full', 2: 'bsdiff4', 3: 'zstd-patch-from', 4: 'tensor' };
const CODECS = Object.values(CODEC_IDS);
const DEFAULT_MAX_TARGET = 64 * 1024 ** 3;
const ZERO32 = Buffer.alloc(32);

const crcTable = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** zlib's CRC-32 (formats.md, introduction). */
function crc32(buf) {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = crcTable[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest();
}

function zstdBound(n) {
  return n + Math.floor(n / 256) + (n < 131072 ? Math.floor((131072 - n) / 2048) : 0);
}

function bz2Bound(n) {
  return n + Math.ceil(n / 100) + 600;
}

function frameSizes(m) {
  const F = 4 * 1024 * 1024;
  const sizes = new Array(Math.floor(m / F)).fill(F);
  if (m % F) sizes.push(m % F);
  return sizes;
}

/** The largest body `codec` can honestly make for a target of `n` bytes (formats.md §6). */
function bodyBound(codec, n) {
  switch (codec) {
    case 'full':
    case 'zstd-patch-from':
      return zstdBound(n);
    case 'bsdiff4':
      return 32 + bz2Bound(24 * (n + 1)) + bz2Bound(n) + 601;
    case 'tensor':
      return 32 + frameSizes(1 + 8 + n + 1).reduce((sum, s) => sum + 4 + zstdBound(s), 0);
    default:
      throw new PatchError(`unknown codec ${codec}`);
  }
}

function payloadBound(codec, n) {
  return HEADER + bodyBound(codec, n) + TRAILER;
}

/** Read and check the container header of the whole payload `data` (§1 steps 1-6). */
function readHeader(data, maxTarget = DEFAULT_MAX_TARGET) {
  if (data.length < HEADER) throw new PatchError('payload shorter than its header');
  if (!data.subarray(0, 8).equals(MAGIC)) throw new PatchError('bad payload magic');
  const version = data.readUInt16LE(8);
  if (version !== 1) throw new PatchError(`payload format version ${version}`);
  if (crc32(data.subarray(0, 92)) !== data.readUInt32LE(92)) throw new PatchError('payload header CRC mismatch');
  const codec = CODEC_IDS[data[10]];
  if (!codec) throw new PatchError(`unknown codec id ${data[10]}`);
  if (data[11] !== 0) throw new PatchError('reserved byte is not zero');
  const targetSize = data.readBigUInt64LE(76);
  if (targetSize > BigInt(maxTarget)) throw new PatchError('target size above the maximum');
  const bodyLength = data.readBigUInt64LE(84);
  if (BigInt(data.length) !== BigInt(HEADER + TRAILER) + bodyLength) {
    throw new PatchError(BigInt(data.length) < BigInt(HEADER + TRAILER) + bodyLength ? 'payload truncated' : 'payload longer than its header says');
  }
  return {
    codec,
    baseSha256: data.subarray(12, 44),
    targetSha256: data.subarray(44, 76),
    targetSize: Number(targetSize),
    bodyLength: Number(bodyLength),
  };
}

/**
 * Apply the payload `data` (a whole container) for the signed file {size, sha256 (hex)}:
 * returns the target bytes, or throws. `base` is the base file's bytes (null for `full`).
 */
function applyPayload(data, { codec, size, sha256: want, base }) {
  const h = readHeader(data, size);
  if (h.codec !== codec) throw new PatchError(`payload codec ${h.codec}, plan says ${codec}`);
  if (h.targetSize !== size) throw new IntegrityError('payload target size differs from the signed size');
  if (h.targetSha256.toString('hex') !== want) throw new IntegrityError('payload target sha256 differs from the signed one');
  if (h.bodyLength > bodyBound(h.codec, h.targetSize)) throw new PatchError('payload body above its codec bound');
  const body = data.subarray(HEADER, HEADER + h.bodyLength);
  if (!sha256(body).equals(data.subarray(HEADER + h.bodyLength))) throw new PatchError('payload body sha256 mismatch');
  const needsBase = h.codec !== 'full';
  if (h.baseSha256.equals(ZERO32) === needsBase) throw new PatchError('base sha256 present or absent against the codec');
  if (needsBase) {
    if (!base) throw new WrongBaseError('no base file for a delta');
    if (!sha256(base).equals(h.baseSha256)) throw new WrongBaseError('base file is not the one the patch was made for');
  }
  let out;
  switch (h.codec) {
    case 'full':
      out = decodeFull(body, h.targetSize);
      break;
    case 'zstd-patch-from': {
      const target = h.targetSize;
      const log = Math.min(30, Math.max(10, Math.ceil(Math.log2(base.length + target || 1))));
      out = zstd.decodeFrame(body, { prefix: base.length >= 8 ? base : null, windowMax: 2 ** log, expectSize: target });
      break;
    }
    case 'tensor':
      out = applyTensor(body, base, h.targetSize);
      break;
    case 'bsdiff4':
      out = applyBsdiff(body, base, h.targetSize);
      break;
    default:
      throw new PatchError(`codec ${h.codec}`);
  }
  if (out.length !== h.targetSize || !sha256(out).equals(h.targetSha256)) {
    throw new IntegrityError('decoded file does not match the target size and sha256');
  }
  return out;
}

/** A `full` body: zstd frames decoding to exactly `size` bytes (edgerec writes one, with its content size). */
function decodeFull(body, size) {
  const parts = [];
  let pos = 0;
  let got = 0;
  while (pos < body.length) {
    const rest = body.subarray(pos);
    const skip = zstd.skippableLength(rest);
    if (skip !== null) {
      pos += skip;
      continue;
    }
    const len = zstd.frameLength(rest);
    const out = zstd.decodeFrameUnsized(rest.subarray(0, len), { windowMax: 2 ** 27, maxSize: size - got });
    parts.push(out);
    got += out.length;
    pos += len;
  }
  if (got !== size) throw new PatchError('full: output shorter than the target');
  return Buffer.concat(parts);
}

module.exports = { CODECS, crc32, sha256, readHeader, applyPayload, bodyBound, payloadBound, HEADER, TRAILER };
