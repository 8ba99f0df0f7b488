/* strataml's WebAssembly loader: run a model made by
 *     strataml compile MODEL.onnx --target wasm32 --emit wasm -o DIR
 * in a browser page (<script src="strataml.js">, then `strataml.fetchModel("DIR/model")`)
 * or in Node (`require("./strataml.js").loadFiles("DIR")`).
 *
 *     const model = await strataml.load(wasmBytes, plan, weightsBytes);
 *     const outputs = model.run({x: new Float32Array(...)});   // {name: TypedArray}
 *
 * The plan (model.json) says where every input and output lives; the kernels' own offsets
 * are compiled into the code. The weights are checked against the size and checksum the
 * model was built with. */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.strataml = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  const ARRAYS = {
    float32: Float32Array, float64: Float64Array, float16: Uint16Array,
    int8: Int8Array, int16: Int16Array, int32: Int32Array, int64: BigInt64Array,
    uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, uint64: BigUint64Array,
    bool: Uint8Array,
  };
  const ALIGN = 64;
  const align = (n) => Math.ceil(n / ALIGN) * ALIGN;

  /* The C runtime's checksum (deploy/c_library.py): position-weighted sum of 64-bit
   * little-endian words, the tail zero-padded, modulo 2^64. */
  function checksum(bytes) {
    const words = Math.ceil(bytes.length / 8);
    const padded = new Uint8Array(words * 8);
    padded.set(bytes);
    const view = new BigUint64Array(padded.buffer);
    const mask = (1n << 64n) - 1n;
    let sum = 0n;
    for (let i = 0; i < words; i++) sum = (sum + view[i] * BigInt(2 * i + 1)) & mask;
    return sum;
  }

  function arrayType(slot) {
    const type = ARRAYS[slot.dtype];
    if (!type) throw new Error(`strataml: unsupported dtype ${slot.dtype} of '${slot.name}'`);
    return type;
  }

  async function load(wasmBytes, plan, weightsBytes) {
    if (plan.format !== "strataml-wasm" || plan.version !== 1)
      throw new Error("strataml: not a strataml wasm plan (format/version)");
    const weights = new Uint8Array(weightsBytes.buffer || weightsBytes,
                                   weightsBytes.byteOffset || 0,
                                   weightsBytes.byteLength);
    if (weights.length !== plan.weights_bytes)
      throw new Error(`strataml: weights of ${weights.length} bytes, the model takes ` +
                      `${plan.weights_bytes}`);
    if (checksum(weights) !== BigInt(plan.weights_checksum))
      throw new Error("strataml: the weights do not match the model (checksum differs)");
    const { instance } = await WebAssembly.instantiate(wasmBytes, {});
    const exports = instance.exports;
    const memory = exports.memory;
    const nIn = plan.inputs.length, nOut = plan.outputs.length;
    // Layout after the module's own data and stack: weights, arena, io table, inputs, outputs.
    let at = align(exports.__heap_base.value);
    const place = (bytes) => { const start = at; at = align(at + Math.max(bytes, 1)); return start; };
    const weightsAt = place(plan.weights_bytes);
    const arenaAt = place(plan.arena_bytes);
    const ioAt = place(4 * (nIn + nOut));
    const inputsAt = plan.inputs.map((s) => place(s.bytes));
    const outputsAt = plan.outputs.map((s) => place(s.bytes));
    const pages = Math.ceil(at / 65536) - memory.buffer.byteLength / 65536;
    if (pages > 0) memory.grow(pages);
    new Uint8Array(memory.buffer, weightsAt, weights.length).set(weights);
    const io = new Uint32Array(memory.buffer, ioAt, nIn + nOut);
    inputsAt.forEach((p, i) => { io[i] = p; });
    outputsAt.forEach((p, k) => { io[nIn + k] = p; });
    // (an exported data symbol is a global holding its address)
    new Int32Array(memory.buffer, exports.strataml_num_threads.value, 1)[0] = 1;
    const entry = exports[plan.entry];

    function run(inputs) {
      plan.inputs.forEach((slot, i) => {
        const value = inputs[slot.name];
        const Type = arrayType(slot);
        if (!(value instanceof Type))
          throw new Error(`strataml: input '${slot.name}' must be a ${Type.name} ` +
                          `(${slot.dtype} [${slot.shape}])`);
        if (value.byteLength !== slot.bytes)
          throw new Error(`strataml: input '${slot.name}' has ${value.length} elements, the ` +
                          `model takes ${slot.bytes / Type.BYTES_PER_ELEMENT} ` +
                          `(${slot.dtype} [${slot.shape}])`);
        new Uint8Array(memory.buffer, inputsAt[i], slot.bytes).set(
          new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
      });
      entry(arenaAt, weightsAt, ioAt);
      const results = {};
      plan.outputs.forEach((slot, k) => {
        let from;
        if (slot.region === "io") from = new Uint32Array(memory.buffer, ioAt, nIn + nOut)[slot.offset];
        else if (slot.region === "weights") from = weightsAt + slot.offset;
        else from = arenaAt + slot.offset;
        const Type = arrayType(slot);
        const bytes = new Uint8Array(memory.buffer, from, slot.bytes).slice();
        results[slot.name] = new Type(bytes.buffer);
      });
      return results;
    }

    return { run, inputs: plan.inputs, outputs: plan.outputs };
  }

  /* Node: DIR/NAME.wasm, DIR/NAME.json, DIR/NAME.weights. */
  async function loadFiles(dir, name = "model") {
    const fs = require("fs");
    const path = require("path");
    const read = (suffix) => fs.readFileSync(path.join(dir, `${name}${suffix}`));
    return load(read(".wasm"), JSON.parse(read(".json")), read(".weights"));
  }

  /* A browser page: PREFIX.wasm, PREFIX.json, PREFIX.weights fetched from the server. */
  async function fetchModel(prefix) {
    const get = async (suffix) => {
      const response = await fetch(prefix + suffix);
      if (!response.ok) throw new Error(`strataml: cannot fetch ${prefix}${suffix}`);
      return response;
    };
    const [wasm, plan, weights] = await Promise.all([
      get(".wasm").then((r) => r.arrayBuffer()), get(".json").then((r) => r.json()),
      get(".weights").then((r) => r.arrayBuffer())]);
    return load(wasm, plan, new Uint8Array(weights));
  }

  return { load, loadFiles, fetchModel, checksum };
});
