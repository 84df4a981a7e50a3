'use strict';
// The `tensor` codec body (formats.md §5): a remainder frame against prefix ranges of the base, then
// an op stream in zstd frames that writes the target front to back.

const { PatchError } = require('./errors');
const zstd = require('./zstd');

const MiB = 1024 * 1024;
const FRAME_SIZE = 4 * MiB;
const MAX_OP_PAYLOAD = 4 * MiB;
const MAX_REMAINDER = 8 * MiB;
const MAX_RANGES = 65536;
const MAX_WINDOW = 2 ** 25;
const MAX_FRAME_OVERHEAD = 65536;

function u64(buf, pos) {
  const v = buf.readBigUInt64LE(pos);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new PatchError('u64 field too large');
  return Number(v);
}

function require_(cond, what) {
  if (!cond) throw new PatchError(`tensor body: ${what}`);
}

/** The op stream: the decoded bytes of the op frames, read across frame boundaries. */
class OpStream {
  constructor(body, pos) {
    this.body = body;
    this.pos = pos; // next frame's size field in the body
    this.buf = Buffer.alloc(0);
    this.at = 0;
  }

  _nextFrame() {
    const left = this.body.length - this.pos;
    require_(left >= 4, 'op stream ended before END');
    const size = this.body.readUInt32LE(this.pos);
    this.pos += 4;
    require_(size > 0 && size <= Math.min(left - 4, FRAME_SIZE + MAX_FRAME_OVERHEAD), `op frame size ${size}`);
    const frame = this.body.subarray(this.pos, this.pos + size);
    this.pos += size;
    const h = zstd.frameHeader(frame);
    require_(h.contentSize !== null && h.contentSize >= 1 && h.contentSize <= FRAME_SIZE, 'op frame content size');
    this.buf = zstd.decodeFrame(frame, { windowMax: MAX_WINDOW, expectSize: h.contentSize });
    this.at = 0;
  }

  read(n) {
    const parts = [];
    let want = n;
    while (want > 0) {
      if (this.at === this.buf.length) this._nextFrame();
      const take = Math.min(want, this.buf.length - this.at);
      parts.push(this.buf.subarray(this.at, this.at + take));
      this.at += take;
      want -= take;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  u8() {
    return this.read(1)[0];
  }

  u64() {
    return u64(this.read(8), 0);
  }

  atEnd() {
    return this.at === this.buf.length && this.pos === this.body.length;
  }
}

/** Undo byte planes: `planes` holds byte j of element i at j*n + i. */
function unplane(planes, elem) {
  if (elem === 1) return planes;
  const n = planes.length / elem;
  const out = Buffer.allocUnsafe(planes.length);
  for (let j = 0; j < elem; j++) {
    const off = j * n;
    for (let i = 0; i < n; i++) out[i * elem + j] = planes[off + i];
  }
  return out;
}

/** Inverse transform of `d` (elements of `elem` bytes, LE) against base bytes `b` (same length). */
function untransform(d, b, elem, transform) {
  if (transform === 0) return d;
  const out = Buffer.allocUnsafe(d.length);
  if (transform === 1) {
    for (let i = 0; i < d.length; i++) out[i] = d[i] ^ b[i];
    return out;
  }
  if (transform !== 2) throw new PatchError(`tensor body: transform ${transform}`);
  const n = d.length / elem;
  if (elem === 8) {
    const mask = (1n << 64n) - 1n;
    for (let i = 0; i < n; i++) {
      const dv = d.readBigUInt64LE(i * 8);
      const t = ((dv >> 1n) ^ (-(dv & 1n) & mask)) & mask;
      out.writeBigUInt64LE((b.readBigUInt64LE(i * 8) + t) & mask, i * 8);
    }
    return out;
  }
  const bits = elem * 8;
  const modulus = 2 ** bits;
  for (let i = 0; i < n; i++) {
    const p = i * elem;
    const dv = d.readUIntLE(p, elem);
    const bv = b.readUIntLE(p, elem);
    const half = Math.floor(dv / 2);
    const t = dv % 2 ? modulus - 1 - half : half; // (d >> 1) XOR -(d & 1): odd d complements d >> 1
    out.writeUIntLE((bv + t) % modulus, p, elem);
  }
  return out;
}

function checkElem(elem) {
  require_(elem === 1 || elem === 2 || elem === 4 || elem === 8, `element size ${elem}`);
}

/** Apply a tensor body to `base`, producing exactly `targetSize` bytes. */
function applyTensor(body, base, targetSize) {
  require_(body.length >= 32, 'shorter than its header');
  require_(body.subarray(0, 4).toString('latin1') === 'ERT1', 'bad magic');
  const oldSize = u64(body, 4);
  const R = u64(body, 12);
  const Rn = body.readUInt32LE(20);
  const F = u64(body, 24);
  require_(oldSize === base.length, 'old size is not the base size');
  let left = body.length - 32;
  require_(Rn <= Math.min(MAX_RANGES, Math.floor(left / 16)), 'too many ranges');
  left -= 16 * Rn;
  require_(R <= Math.min(MAX_REMAINDER, targetSize), 'remainder too large');
  require_(F <= left, 'remainder frame past the body');
  require_((R === 0) === (F === 0), 'remainder and its frame disagree');
  require_(F <= R + MAX_FRAME_OVERHEAD, 'remainder frame too large');
  let pos = 32;
  const ranges = [];
  let total = 0;
  for (let k = 0; k < Rn; k++) {
    const o = u64(body, pos);
    const l = u64(body, pos + 8);
    pos += 16;
    require_(o <= base.length && l <= base.length - o, 'range outside the base');
    total += l;
    require_(total <= MAX_REMAINDER, 'ranges too long');
    ranges.push(base.subarray(o, o + l));
  }
  let remainder = Buffer.alloc(0);
  if (F > 0) {
    const prefix = Buffer.concat(ranges);
    remainder = zstd.decodeFrame(body.subarray(pos, pos + F), {
      prefix: prefix.length >= 8 ? prefix : null,
      windowMax: MAX_WINDOW,
      expectSize: R,
    });
  }
  pos += F;
  const ops = new OpStream(body, pos);
  const out = Buffer.alloc(targetSize);
  let w = 0;
  let rpos = 0;
  const room = (n) => require_(n <= targetSize - w, 'op writes past the target size');
  const inBase = (o, n) => require_(o <= base.length && n <= base.length - o, 'op reads outside the base');
  for (;;) {
    const code = ops.u8();
    if (code === 0) break;
    if (code === 1) {
      const o = ops.u64();
      const n = ops.u64();
      inBase(o, n);
      room(n);
      base.copy(out, w, o, o + n);
      w += n;
    } else if (code === 2) {
      const n = ops.u64();
      room(n);
      ops.read(n).copy(out, w);
      w += n;
    } else if (code === 3) {
      const n = ops.u64();
      require_(n <= R - rpos, 'remainder over-read');
      room(n);
      remainder.copy(out, w, rpos, rpos + n);
      rpos += n;
      w += n;
    } else if (code === 4) {
      const oldOff = ops.u64();
      const oldLen = ops.u64();
      const len = ops.u64();
      const elem = ops.u8();
      const transform = ops.u8();
      checkElem(elem);
      require_(transform <= 2, `transform ${transform}`);
      require_(len <= MAX_OP_PAYLOAD && len % elem === 0 && oldLen <= len, 'DENSE lengths');
      inBase(oldOff, oldLen);
      room(len);
      const b = Buffer.alloc(len);
      base.copy(b, 0, oldOff, oldOff + oldLen);
      untransform(unplane(ops.read(len), elem), b, elem, transform).copy(out, w);
      w += len;
    } else if (code === 5) {
      w = rowsOp(ops, base, out, w, targetSize);
    } else {
      throw new PatchError(`tensor body: unknown op ${code}`);
    }
  }
  require_(ops.atEnd(), 'bytes after END');
  require_(rpos === R, 'remainder not consumed');
  require_(w === targetSize, 'output shorter than the target size');
  return out;
}

function rowsOp(ops, base, out, w, targetSize) {
  const oldOff = ops.u64();
  const oldRows = ops.u64();
  const newRows = ops.u64();
  const rowBytes = ops.u64();
  const elem = ops.u8();
  const transform = ops.u8();
  const count = ops.u64();
  checkElem(elem);
  require_(transform <= 2, `transform ${transform}`);
  require_(rowBytes > 0 && rowBytes <= MAX_OP_PAYLOAD && rowBytes % elem === 0, 'ROWS row bytes');
  require_(oldRows <= newRows && count <= newRows, 'ROWS counts');
  require_(count * (rowBytes + 4) <= MAX_OP_PAYLOAD, 'ROWS payload too large');
  require_(oldOff <= base.length && oldRows * rowBytes <= base.length - oldOff, 'ROWS old table outside the base');
  require_(newRows * rowBytes <= targetSize - w, 'ROWS writes past the target size');
  const gaps = unplane(ops.read(4 * count), 4);
  const idx = new Array(count);
  let below = 0;
  let prev = -1;
  for (let k = 0; k < count; k++) {
    const g = gaps.readUInt32LE(4 * k);
    require_(k === 0 || g >= 1, 'ROWS indices not increasing');
    const i = k === 0 ? g : prev + g;
    require_(i < newRows, 'ROWS index past the table');
    idx[k] = i;
    prev = i;
    if (i < oldRows) below += 1;
  }
  require_(newRows - oldRows === count - below, 'ROWS does not list every added row');
  const deltas = unplane(ops.read(count * rowBytes), elem);
  const zeros = Buffer.alloc(rowBytes);
  let k = 0;
  for (let r = 0; r < newRows; r++) {
    const old = r < oldRows ? base.subarray(oldOff + r * rowBytes, oldOff + (r + 1) * rowBytes) : zeros;
    if (k < count && idx[k] === r) {
      untransform(deltas.subarray(k * rowBytes, (k + 1) * rowBytes), old, elem, transform).copy(out, w);
      k += 1;
    } else {
      old.copy(out, w);
    }
    w += rowBytes;
  }
  return w;
}

module.exports = { applyTensor, unplane, untransform };
