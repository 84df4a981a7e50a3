'use strict';
// The `bsdiff4` codec body (formats.md §3): BSDIFF40 with three bzip2 blocks.

const Bunzip = require('seek-bzip');
const Stream = require('seek-bzip/lib/stream');
const { PatchError } = require('./errors');

/** bsdiff's sign-magnitude 64-bit integer at buf[pos..pos+8]. */
function offt(buf, pos) {
  const raw = buf.readBigUInt64LE(pos);
  const magnitude = raw & ((1n << 63n) - 1n);
  if (magnitude > BigInt(Number.MAX_SAFE_INTEGER)) throw new PatchError('bsdiff4: integer too large');
  return raw >> 63n ? -Number(magnitude) : Number(magnitude);
}

/** Decompress exactly one whole bzip2 stream (no trailing bytes) to at most `limit` bytes. */
function bunzip(data, limit) {
  const input = new Stream();
  input.pos = 0;
  input.readByte = function readByte() {
    if (this.pos >= data.length) throw new PatchError('bsdiff4: bzip2 stream truncated');
    return data[this.pos++];
  };
  input.seek = function seek(p) {
    this.pos = p;
  };
  input.eof = function eof() {
    return this.pos >= data.length;
  };
  const chunks = [];
  let cur = Buffer.alloc(65536);
  let at = 0;
  let total = 0;
  const output = new Stream();
  Object.assign(output, {
    writeByte(b) {
      if (total >= limit) throw new PatchError('bsdiff4: block decompresses past its bound');
      if (at === cur.length) {
        chunks.push(cur);
        cur = Buffer.alloc(65536);
        at = 0;
      }
      cur[at++] = b;
      total += 1;
    },
  });
  try {
    Bunzip.decode(input, output, false);
  } catch (err) {
    if (err instanceof PatchError) throw err;
    throw new PatchError(`bsdiff4: bad bzip2 stream (${err.message || err})`);
  }
  if (input.pos !== data.length) throw new PatchError('bsdiff4: bytes after the bzip2 stream');
  chunks.push(cur.subarray(0, at));
  return Buffer.concat(chunks);
}

function applyBsdiff(body, old, targetSize) {
  if (body.length < 32 || body.subarray(0, 8).toString('latin1') !== 'BSDIFF40') throw new PatchError('bsdiff4: bad magic');
  const C = offt(body, 8);
  const D = offt(body, 16);
  const newSize = offt(body, 24);
  if (C < 0 || D < 0 || newSize < 0) throw new PatchError('bsdiff4: negative length');
  if (newSize !== targetSize) throw new PatchError('bsdiff4: new size differs from the target size');
  if (C > body.length - 32 || D > body.length - 32 - C) throw new PatchError('bsdiff4: blocks past the body');
  const control = bunzip(body.subarray(32, 32 + C), 24 * (targetSize + 1));
  if (control.length % 24) throw new PatchError('bsdiff4: control block not a multiple of 24');
  const diff = bunzip(body.subarray(32 + C, 32 + C + D), targetSize);
  const extra = bunzip(body.subarray(32 + C + D), targetSize - diff.length);
  const out = Buffer.alloc(targetSize);
  let w = 0;
  let o = 0;
  let dp = 0;
  let ep = 0;
  for (let k = 0; k < control.length; k += 24) {
    const x = offt(control, k);
    const y = offt(control, k + 8);
    const z = offt(control, k + 16);
    if (x < 0 || y < 0) throw new PatchError('bsdiff4: negative control length');
    if (x > targetSize - w || x > diff.length - dp) throw new PatchError('bsdiff4: control entry out of bounds');
    for (let i = 0; i < x; i++) {
      const at = o + i;
      out[w + i] = ((at >= 0 && at < old.length ? old[at] : 0) + diff[dp + i]) & 0xff; // bspatch: outside old reads 0
    }
    w += x;
    o += x;
    dp += x;
    if (y > targetSize - w || y > extra.length - ep) throw new PatchError('bsdiff4: control entry out of bounds');
    extra.copy(out, w, ep, ep + y);
    w += y;
    ep += y;
    o += z;
  }
  if (w !== targetSize || dp !== diff.length || ep !== extra.length) throw new PatchError('bsdiff4: output, diff or extra not used up exactly');
  return out;
}

module.exports = { applyBsdiff };
