// Run a strataml wasm32 model under Node, from .npy files to .npy files:
//
//     node DIR/run.mjs IN1.npy ... --out OUTDIR
//
// DIR holds model.wasm, model.json, model.weights and strataml.js (the loader pages use).
// Inputs come in the model's input order and are checked against its dtypes and shapes;
// output k is written to OUTDIR/<its name>.npy.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const strataml = createRequire(import.meta.url)("./strataml.js");

const DESCR = {
  float32: "<f4", float64: "<f8", float16: "<f2", int8: "|i1", int16: "<i2", int32: "<i4",
  int64: "<i8", uint8: "|u1", uint16: "<u2", uint32: "<u4", uint64: "<u8", bool: "|b1",
};
const ARRAYS = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array, int8: Int8Array,
  int16: Int16Array, int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array,
  uint16: Uint16Array, uint32: Uint32Array, uint64: BigUint64Array, bool: Uint8Array,
};
const shapeText = (shape) => `(${shape.join(", ")}${shape.length === 1 ? "," : ""})`;

function fail(message) {
  console.error(`run.mjs: ${message}`);
  process.exit(1);
}

function readNpy(file, slot) {
  const bytes = fs.readFileSync(file);
  if (bytes.length < 10 || bytes.toString("latin1", 0, 6) !== "\x93NUMPY") fail(`${file} is not an .npy file`);
  const major = bytes[6];
  const headerLen = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = bytes.toString("latin1", start, start + headerLen).replace(/\s/g, "");
  const want = [`'descr':'${DESCR[slot.dtype]}'`, "'fortran_order':False",
                `'shape':${shapeText(slot.shape).replace(/\s/g, "")}`];
  if (!want.every((w) => header.includes(w)))
    fail(`${file} holds ${header}; input '${slot.name}' takes a C-order ${slot.dtype} array ` +
         `of shape ${shapeText(slot.shape)}`);
  const data = bytes.subarray(start + headerLen);
  if (data.length !== slot.bytes) fail(`${file}: expected ${slot.bytes} bytes of data`);
  const copy = new Uint8Array(data.length);
  copy.set(data);
  return new ARRAYS[slot.dtype](copy.buffer);
}

function writeNpy(file, slot, array) {
  let header = `{'descr': '${DESCR[slot.dtype]}', 'fortran_order': False, ` +
               `'shape': ${shapeText(slot.shape)}, }`;
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header.padEnd(total - 10 - 1, " ") + "\n";
  const prefix = Buffer.alloc(10);
  prefix.write("\x93NUMPY", 0, "latin1");
  prefix[6] = 1;
  prefix.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, "latin1"),
                                        Buffer.from(array.buffer, array.byteOffset, array.byteLength)]));
}

const args = process.argv.slice(2);
const outAt = args.indexOf("--out");
const outDir = outAt >= 0 ? args[outAt + 1] : null;
const files = args.filter((_, i) => outAt < 0 || (i !== outAt && i !== outAt + 1));
const model = await strataml.loadFiles(here).catch((e) => fail(e.message));
if (files.length !== model.inputs.length)
  fail(`the model takes ${model.inputs.length} inputs (${model.inputs.map((s) => s.name)}), ` +
       `${files.length} files given`);
const inputs = {};
model.inputs.forEach((slot, i) => { inputs[slot.name] = readNpy(files[i], slot); });
let outputs;
try {
  outputs = model.run(inputs);
} catch (e) {
  fail(e.message);
}
for (const slot of model.outputs) {
  console.log(`output ${slot.name}: ${slot.dtype} ${shapeText(slot.shape)}`);
  if (outDir) writeNpy(path.join(outDir, `${slot.name.replace(/[/\\]/g, "_")}.npy`), slot,
                       outputs[slot.name]);
}
