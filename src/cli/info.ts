import { loadModel } from '../io/model.js';
import { countParams } from '../engine/index.js';
import { parse, startEngineFromOptions, ENGINE_HELP, modelDir, MODEL_DEFAULT } from './common.js';

export const INFO_HELP = `starflow info: show a model directory

Usage:
  starflow info [--model DIR] [--json]      (${MODEL_DEFAULT})
${ENGINE_HELP}`;

export async function infoCommand(argv: string[]): Promise<void> {
  const o = parse(argv, { model: { type: 'string' }, json: { type: 'boolean' } });
  if (o.help) return void console.log(INFO_HELP);
  const dir = modelDir(o);
  await startEngineFromOptions(o);
  const { family, cfg, params, provenance } = await loadModel(dir);
  const info = { ...cfg, noiseShape: family.noiseShape(cfg), parameters: countParams(params), ...(provenance ? { provenance } : {}) };
  if (o.json) return void console.log(JSON.stringify(info));
  console.log(family.describe(cfg));
  for (const [k, v] of Object.entries(info)) console.log(`${k.padEnd(16)} ${typeof v === 'object' ? JSON.stringify(v) : v}`);
}
