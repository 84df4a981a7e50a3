'use strict';
// edgerec.v1.Tensor (formats.md §8): little-endian, row-major, no padding.

const { InvalidInputError } = require('./errors');

const DTYPES = {
  float32: [4, (b, i) => b.readFloatLE(i), (b, v, i) => b.writeFloatLE(Number(v), i)],
  float64: [8, (b, i) => b.readDoubleLE(i), (b, v, i) => b.writeDoubleLE(Number(v), i)],
  int64: [8, (b, i) => b.readBigInt64LE(i).toString(), (b, v, i) => b.writeBigInt64LE(BigInt(v), i)],
  int32: [4, (b, i) => b.readInt32LE(i), (b, v, i) => b.writeInt32LE(Number(v), i)],
  int16: [2, (b, i) => b.readInt16LE(i), (b, v, i) => b.writeInt16LE(Number(v), i)],
  int8: [1, (b, i) => b.readInt8(i), (b, v, i) => b.writeInt8(Number(v), i)],
  uint8: [1, (b, i) => b.readUInt8(i), (b, v, i) => b.writeUInt8(Number(v), i)],
  bool: [1, (b, i) => b.readUInt8(i) !== 0, (b, v, i) => b.writeUInt8(v ? 1 : 0, i)],
};
const MAX_BYTES = 64 * 1024 * 1024;

function count(shape) {
  return shape.reduce((n, d) => n * Number(d), 1);
}

/** A Tensor message from flat row-major `values`. */
function encodeTensor(dtype, shape, values) {
  const spec = DTYPES[dtype];
  if (!spec) throw new InvalidInputError(`dtype ${dtype} not supported by this client`);
  if (shape.length > 8 || shape.some((d) => d < 0)) throw new InvalidInputError('bad shape');
  const n = count(shape);
  if (values.length !== n) throw new InvalidInputError(`${values.length} values for shape ${shape}`);
  const data = Buffer.alloc(n * spec[0]);
  values.forEach((v, i) => spec[2](data, v, i * spec[0]));
  return { dtype, shape: shape.map(String), data };
}

/** {dtype, shape, values} from a Tensor message, after the receiver's checks. */
function decodeTensor(t) {
  const spec = DTYPES[t.dtype];
  if (!spec) throw new InvalidInputError(`dtype ${t.dtype}`);
  const shape = t.shape.map(Number);
  if (shape.length > 8 || shape.some((d) => d < 0)) throw new InvalidInputError('bad shape');
  if (spec[0] * shape.reduce((n, d) => n * Math.max(d, 1), 1) > MAX_BYTES) throw new InvalidInputError('tensor too large');
  const n = count(shape);
  if (t.data.length !== n * spec[0]) throw new InvalidInputError('data length does not match the shape');
  const values = [];
  for (let i = 0; i < n; i++) values.push(spec[1](t.data, i * spec[0]));
  return { dtype: t.dtype, shape, values };
}

module.exports = { encodeTensor, decodeTensor };
