// Writing a state dict as torch.save does (its zip format): `NAME/data.pkl` is a protocol-2
// pickle of an OrderedDict whose tensors are `torch._utils._rebuild_tensor_v2` calls on float32
// storages held as persistent ids, `NAME/data/<key>` the raw little-endian bytes of each storage,
// `NAME/version` the format version. torch.load(..., weights_only=True) reads it: only the
// OrderedDict, the rebuild function and FloatStorage are named. Stored (uncompressed) zip members
// with their data 64-byte aligned, as torch writes them. Browser-safe: no Node imports.
import { crc32, type StateDict } from './torch-checkpoint.js';

/** The pickle opcodes used (pickle protocol 2). */
const OP = {
  PROTO: 0x80, GLOBAL: 0x63, EMPTY_TUPLE: 0x29, REDUCE: 0x52, MARK: 0x28, SETITEMS: 0x75, STOP: 0x2e, BINUNICODE: 0x58,
  BININT: 0x4a, TUPLE: 0x74, NEWFALSE: 0x89, BINPERSID: 0x51,
};

class Bytes {
  readonly parts: number[] = [];
  byte(...b: number[]): this {
    this.parts.push(...b);
    return this;
  }
  u16(v: number): this {
    return this.byte(v & 0xff, (v >>> 8) & 0xff);
  }
  u32(v: number): this {
    return this.byte(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }
  text(s: string): this {
    return this.byte(...new TextEncoder().encode(s));
  }
  get length(): number {
    return this.parts.length;
  }
  done(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

function pickleStateDict(sd: StateDict): Uint8Array {
  const p = new Bytes().byte(OP.PROTO, 2);
  const global = (module: string, name: string) => p.byte(OP.GLOBAL).text(`${module}\n${name}\n`);
  const str = (s: string) => {
    const b = new TextEncoder().encode(s);
    p.byte(OP.BINUNICODE).u32(b.length).byte(...b);
  };
  const int = (v: number) => p.byte(OP.BININT).u32(v);
  const ints = (vs: number[]) => {
    p.byte(OP.MARK);
    for (const v of vs) int(v);
    p.byte(OP.TUPLE);
  };
  const orderedDict = () => global('collections', 'OrderedDict').byte(OP.EMPTY_TUPLE, OP.REDUCE);
  orderedDict();
  p.byte(OP.MARK);
  [...sd].forEach(([name, t], key) => {
    str(name);
    global('torch._utils', '_rebuild_tensor_v2');
    p.byte(OP.MARK);
    // The storage, as a persistent id: ('storage', FloatStorage, key, location, numel).
    p.byte(OP.MARK);
    str('storage');
    global('torch', 'FloatStorage');
    str(String(key));
    str('cpu');
    int(t.data.length);
    p.byte(OP.TUPLE, OP.BINPERSID);
    int(0); // storage offset
    ints(t.shape);
    const stride = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    ints(stride);
    p.byte(OP.NEWFALSE); // requires_grad
    orderedDict(); // backward hooks
    p.byte(OP.TUPLE, OP.REDUCE);
  });
  p.byte(OP.SETITEMS, OP.STOP);
  return p.done();
}

/** A zip archive of stored members, each member's data starting at a multiple of 64 bytes. */
function zipStored(members: [string, Uint8Array][]): Uint8Array {
  const chunks: Uint8Array[] = [];
  const central = new Bytes();
  let offset = 0;
  for (const [name, data] of members) {
    const nameBytes = new TextEncoder().encode(name);
    const headerLength = 30 + nameBytes.length;
    const pad = (64 - ((offset + headerLength + 4) % 64)) % 64; // an extra field pads the data to 64
    const crc = crc32(data);
    const local = new Bytes().u32(0x04034b50).u16(20).u16(0).u16(0).u16(0).u16(0).u32(crc).u32(data.length).u32(data.length).u16(nameBytes.length).u16(4 + pad);
    local.byte(...nameBytes).u16(0xcafe).u16(pad).byte(...new Array<number>(pad).fill(0));
    central.u32(0x02014b50).u16(20).u16(20).u16(0).u16(0).u16(0).u16(0).u32(crc).u32(data.length).u32(data.length).u16(nameBytes.length);
    central.u16(0).u16(0).u16(0).u16(0).u32(0).u32(offset).byte(...nameBytes);
    const head = local.done();
    chunks.push(head, data);
    offset += head.length + data.length;
  }
  const dir = central.done();
  const end = new Bytes().u32(0x06054b50).u16(0).u16(0).u16(members.length).u16(members.length).u32(dir.length).u32(offset).u16(0).done();
  const out = new Uint8Array(offset + dir.length + end.length);
  let at = 0;
  for (const c of [...chunks, dir, end]) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** torch.save's bytes for a float32 state dict; `archive` names the zip's top folder (torch uses the file's stem). */
export function torchSave(sd: StateDict, archive: string): Uint8Array {
  const members: [string, Uint8Array][] = [[`${archive}/data.pkl`, pickleStateDict(sd)]];
  [...sd.values()].forEach((t, key) => {
    const data = new Uint8Array(t.data.length * 4);
    const view = new DataView(data.buffer);
    t.data.forEach((v, i) => view.setFloat32(i * 4, v, true));
    members.push([`${archive}/data/${key}`, data]);
  });
  members.push([`${archive}/version`, new TextEncoder().encode('3\n')]);
  return zipStored(members);
}
