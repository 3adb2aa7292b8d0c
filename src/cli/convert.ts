import { convertCheckpoint, exportModel, type ConvertOverrides } from '../io/convert.js';
import { tarflow } from '../models/flow.js';
import { parse, intOpt, numOpt, strOpt, UsageError } from './common.js';

export const CONVERT_HELP = `starflow convert: turn an apple/ml-tarflow or apple/ml-starflow checkpoint into a model directory

Usage:
  starflow convert --from FILE --out DIR [--img-size N] [--in-channels C] [--patch-size P]
                   [--noise-std S] [--head-dim D] [--json]
  starflow convert --from FILE --starflow-config ARGS.yaml --out DIR      (ml-starflow)

  --from FILE        a torch.save state dict (.pth, the reference's released weights) or a
                     .safetensors file with the same tensor names
  --out DIR          model directory to write (config.json + model.safetensors)
  --img-size N       image side in pixels
  --in-channels C    image channels
  --patch-size P     patch side in pixels
  --noise-std S      training noise σ (used by sample --denoise)
  --head-dim D       attention head size (default 64, as the reference)
  --starflow-config ARGS.yaml
                     ml-starflow: the YAML of the model's arguments (its configs/*.yaml, the
                     'arguments:' list); the shape flags do not apply
  --json             print the inferred config and notes as JSON

ml-tarflow: the architecture is inferred from the tensor shapes (blocks, layers, width, classes, tokens,
MLP ratio, nvp) and from the reference's file names,
{dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise}.pth (patch size and noise σ).
The token dimension channels·patch² alone can be ambiguous (12 = 3·2² = 12·1²); then pass
--patch-size, --in-channels or --img-size. Flags win over what the file says.

The .pth file is read with a restricted reader: only tensors, OrderedDicts and torch's tensor
rebuild functions are accepted; any other Python object in the pickle is refused by name and
nothing in the file is ever executed.`;

export async function convertCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    from: { type: 'string' },
    out: { type: 'string' },
    'img-size': { type: 'string' },
    'in-channels': { type: 'string' },
    'patch-size': { type: 'string' },
    'noise-std': { type: 'string' },
    'head-dim': { type: 'string' },
    'starflow-config': { type: 'string' },
    json: { type: 'boolean' },
  });
  if (o.help) return void console.log(CONVERT_HELP);
  const from = strOpt(o.from, 'from');
  if (!from) throw new UsageError('--from FILE is required');
  const out = strOpt(o.out, 'out');
  if (!out) throw new UsageError('--out DIR is required');
  const ov: ConvertOverrides = {};
  if (o['img-size'] !== undefined) ov.imgSize = intOpt(o['img-size'], 'img-size', 1);
  if (o['in-channels'] !== undefined) ov.inChannels = intOpt(o['in-channels'], 'in-channels', 1);
  if (o['patch-size'] !== undefined) ov.patchSize = intOpt(o['patch-size'], 'patch-size', 1);
  if (o['head-dim'] !== undefined) ov.headDim = intOpt(o['head-dim'], 'head-dim', 1);
  if (o['noise-std'] !== undefined) ov.noiseStd = numOpt(o['noise-std'], 'noise-std', 0, (x) => x >= 0, 'a number ≥ 0');
  const config = strOpt(o['starflow-config'], 'starflow-config');
  if (config && Object.keys(ov).length) throw new UsageError('--starflow-config takes the architecture from the YAML: drop the shape flags');
  const r = await convertCheckpoint(from, out, ov, config);
  if (o.json) {
    console.log(JSON.stringify({ out, config: r.cfg, tensors: r.tensors, parameters: r.parameters, notes: r.notes }));
    return;
  }
  const c = r.cfg;
  console.log(`wrote ${out}: ${tarflow.describe(c)}, ${c.nvp ? 'affine' : 'volume-preserving'}, noise σ ${c.noiseStd}; ${r.parameters.toLocaleString('en-US')} parameters`);
  for (const n of r.notes) console.log(`note: ${n}`);
}

export const EXPORT_HELP = `starflow export: write a model for apple/ml-tarflow's or apple/ml-starflow's own code

Usage:
  starflow export --model DIR --format ml-starflow|ml-tarflow --out DIR2

  --model DIR        model directory (config.json + model.safetensors)
  --format F         ml-starflow: DIR2/model.pth + DIR2/config.yaml (its 'arguments:' list);
                     ml-tarflow: DIR2/{dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise}.pth
  --out DIR2         where to write (created)

model.pth is a torch.save file of the reference's state dict (its parameter names and layouts,
and the buffers its Model registers), so its load_state_dict(strict=True) takes it: train small
here, continue with the reference trainer. Options a reference lacks are refused by name
(ml-tarflow has no start token, RoPE, softplus, ...; ml-starflow no class embeddings).`;

export async function exportCommand(argv: string[]): Promise<void> {
  const o = parse(argv, { model: { type: 'string' }, format: { type: 'string' }, out: { type: 'string' } });
  if (o.help) return void console.log(EXPORT_HELP);
  const model = strOpt(o.model, 'model');
  const out = strOpt(o.out, 'out');
  const format = strOpt(o.format, 'format');
  if (!model || !out || !format) throw new UsageError('--model DIR, --format F and --out DIR2 are required');
  if (format !== 'ml-starflow' && format !== 'ml-tarflow') throw new UsageError(`--format must be ml-starflow or ml-tarflow, got '${format}'`);
  const r = await exportModel(model, out, format);
  console.log(`wrote ${r.files.join(' and ')} (${r.tensors} tensors)`);
}
