'use strict';
// Runs the conformance vectors of tests/vectors (format: tests/vectors/README.md).

async function runVectors(dir) {
  throw new Error(`vectors runner not written yet (${dir})`);
}

module.exports = { runVectors };
