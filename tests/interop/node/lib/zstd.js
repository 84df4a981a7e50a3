'use strict';
// zstd frames (RFC 8878): header parsing and bounds in JavaScript, decoding by libzstd compiled to
// WebAssembly (zstd-codec). The header is read here first so that window, dictionary id and content
// size are refused before any byte is decoded (formats.md §2, §4, §5.1).

const { ZstdCodec } = require('zstd-codec');
const { PatchError } = require('./errors');

const MAGIC = 0xfd2fb528;
const DICT_MAGIC = Buffer.from([0x37, 0xa4, 0x30, 0xec]);

let codec = null;

/** Load the WebAssembly module once; every other function here needs it. */
function ready() {
  if (codec) return Promise.resolve();
  return new Promise((resolve) => {
    ZstdCodec.run((z) => {
      codec = z;
      resolve();
    });
  });
}

/** Parse the frame header at data[0..]: {windowSize, dictId, contentSize (or null), checksum, headerSize}. */
function frameHeader(data) {
  if (data.length < 6) throw new PatchError('zstd frame shorter than a header');
  if (data.readUInt32LE(0) !== MAGIC) throw new PatchError('not a zstd frame (bad magic)');
  const fhd = data[4];
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  if ((fhd >> 3) & 1) throw new PatchError('zstd frame header: reserved bit set');
  const checksum = (fhd >> 2) & 1;
  const didSize = [0, 1, 2, 4][fhd & 3];
  const fcsSize = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  let pos = 5;
  let windowSize = null;
  if (!single) {
    const wd = data[pos];
    pos += 1;
    const log = 10 + (wd >> 3);
    const base = 2 ** log;
    windowSize = base + (base / 8) * (wd & 7);
  }
  if (data.length < pos + didSize + fcsSize) throw new PatchError('zstd frame header truncated');
  let dictId = 0;
  if (didSize === 1) dictId = data[pos];
  else if (didSize === 2) dictId = data.readUInt16LE(pos);
  else if (didSize === 4) dictId = data.readUInt32LE(pos);
  pos += didSize;
  let contentSize = null;
  if (fcsSize === 1) contentSize = data[pos];
  else if (fcsSize === 2) contentSize = data.readUInt16LE(pos) + 256;
  else if (fcsSize === 4) contentSize = data.readUInt32LE(pos);
  else if (fcsSize === 8) {
    const big = data.readBigUInt64LE(pos);
    contentSize = big > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(big);
  }
  pos += fcsSize;
  if (single) windowSize = contentSize;
  return { windowSize, dictId, contentSize, checksum, headerSize: pos };
}

/** Length in bytes of the one frame starting at data[0] (header, blocks, checksum), by walking block headers. */
function frameLength(data) {
  const h = frameHeader(data);
  let pos = h.headerSize;
  for (;;) {
    if (pos + 3 > data.length) throw new PatchError('zstd frame truncated (block header)');
    const bh = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16);
    pos += 3;
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) throw new PatchError('zstd frame: reserved block type');
    pos += type === 1 ? 1 : size;
    if (pos > data.length) throw new PatchError('zstd frame truncated (block)');
    if (last) break;
  }
  if (h.checksum) pos += 4;
  if (pos > data.length) throw new PatchError('zstd frame truncated (checksum)');
  return pos;
}

/**
 * Decode exactly one frame (the whole of `frame`) to exactly `expectSize` bytes.
 * `prefix`: raw-content history (a Buffer of at least 8 bytes) or null; `windowMax`: largest window accepted.
 */
function decodeFrame(frame, { prefix = null, windowMax, expectSize }) {
  const h = frameHeader(frame);
  if (h.dictId !== 0) throw new PatchError('zstd frame names a dictionary id');
  if (h.windowSize > windowMax) throw new PatchError(`zstd window ${h.windowSize} above ${windowMax}`);
  if (h.contentSize === null) throw new PatchError('zstd frame without a content size (not supported by this client)');
  if (h.contentSize !== expectSize) {
    throw new PatchError(`zstd frame content size ${h.contentSize}, expected ${expectSize}`);
  }
  if (frameLength(frame) !== frame.length) throw new PatchError('bytes after the zstd frame');
  if (expectSize === 0) return Buffer.alloc(0);
  const simple = new codec.Simple();
  let out;
  if (prefix && prefix.length >= 8) {
    // libzstd's plain dictionary loader guesses the type: history that begins with the dictionary
    // magic would be parsed as a formatted dictionary. Bytes in front of the history are never
    // referenced by a frame made against the history alone, so one leading zero byte forces the
    // raw-content reading without changing what a valid frame decodes to.
    const history = prefix.subarray(0, 4).equals(DICT_MAGIC) ? Buffer.concat([Buffer.alloc(1), prefix]) : prefix;
    const dict = new codec.Dict.Decompression(history);
    try {
      out = simple.decompressUsingDict(frame, dict);
    } finally {
      dict.close();
    }
  } else {
    out = simple.decompress(frame);
  }
  if (!out || out.length !== expectSize) throw new PatchError('zstd frame failed to decode');
  return Buffer.from(out.buffer, out.byteOffset, out.length);
}

/** A skippable frame (magic 0x184D2A50-5F) at data[0]: its whole length; null when data[0] starts another frame. */
function skippableLength(data) {
  if (data.length < 8 || (data.readUInt32LE(0) & 0xfffffff0) !== 0x184d2a50) return null;
  const n = 8 + data.readUInt32LE(4);
  if (n > data.length) throw new PatchError('skippable zstd frame truncated');
  return n;
}

/** Decode one frame that may lack a content size (streaming), to at most `maxSize` bytes. */
function decodeFrameUnsized(frame, { windowMax, maxSize }) {
  const h = frameHeader(frame);
  if (h.contentSize !== null) {
    if (h.contentSize > maxSize) throw new PatchError('zstd frame content size past the target size');
    return decodeFrame(frame, { windowMax, expectSize: h.contentSize });
  }
  if (h.dictId !== 0) throw new PatchError('zstd frame names a dictionary id');
  if (h.windowSize > windowMax) throw new PatchError(`zstd window ${h.windowSize} above ${windowMax}`);
  if (frameLength(frame) !== frame.length) throw new PatchError('bytes after the zstd frame');
  const out = new codec.Streaming().decompress(frame, 65536);
  if (!out) throw new PatchError('zstd frame failed to decode');
  if (out.length > maxSize) throw new PatchError('zstd frame decodes past the target size');
  return Buffer.from(out.buffer, out.byteOffset, out.length);
}

module.exports = { ready, frameHeader, frameLength, decodeFrame, decodeFrameUnsized, skippableLength };
