// Whole processes drawing guided samples: `starflow sample` (this checkout's CLI, bin/starflow.js)
// against apple/ml-tarflow's own sampler (Model.reverse, bench/torch/reference_sample.py) run from
// the user's checkout (TARFLOW_REFERENCE_DIR; never copied here), on OpenBLAS, each at 1 and 2
// threads, in interleaved rounds. Both start from the same noise tokens and labels and the same
// weights (the project's model directory, exported with `starflow export --format ml-tarflow`); the
// samples are compared before any time is reported. Start-up, loading and writing count: this is
// the time a user waits.
//
//   TARFLOW_REFERENCE_DIR=/path/to/ml-tarflow npm run bench -- sample-process [--n 1024] [--cfg 2] [--rounds 3]
//
// The model (the engine-speed issue's): width 128, 2 heads of 64, 3 blocks × 2 layers, 16×16×3
// images in 4×4 patches (16 tokens of 48), 10 classes; initial weights (seed 0) with the output
// projections drawn from N(0, 0.01²), as every bench here: sampling costs the same on any weights.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ROOT, median, fmt, torchVersion, torchEnv, torchMissingNote, machineInfo, jaxVersion, defaultCommonFlags, takeCommonFlag, writeReport, eachFlag, benchWeights, tsxArgs, runChild } from './common.js';

const SELF = fileURLToPath(import.meta.url);

export const SAMPLE_MODEL = {
  model: 'tarflow',
  inChannels: 3,
  imgSize: 16,
  patchSize: 4,
  width: 128,
  headDim: 64,
  numBlocks: 3,
  layersPerBlock: 2,
  mlpRatio: 4,
  numClasses: 10,
  noiseStd: 0,
} as const;

/** Child: writes the model directory, its ml-tarflow export and the noise file. */
async function prep(args: string[]): Promise<void> {
  const [dir, n] = [args[args.indexOf('--dir') + 1]!, Number(args[args.indexOf('--n') + 1])];
  process.env.STARFLOW_THREADS = '1';
  const { startNodeEngine } = await import('../src/engine/node.js');
  await startNodeEngine({ device: 'wasm' });
  const E = await import('../src/engine/index.js');
  const { parseFlowConfig, tokenShape } = await import('../src/models/flow.js');
  const { familyOf } = await import('../src/models/registry.js');
  const { saveModel } = await import('../src/io/model.js');
  const { exportModel } = await import('../src/io/convert.js');
  const st = await import('../src/io/safetensors.js');
  const cfg = parseFlowConfig(SAMPLE_MODEL, 'sample-process model');
  const params = await benchWeights(cfg);
  await saveModel(path.join(dir, 'model'), { family: familyOf(cfg), cfg, params });
  const exported = await exportModel(path.join(dir, 'model'), path.join(dir, 'reference'), 'ml-tarflow');
  const weights = exported.files.find((f) => f.endsWith('.pth'))!;
  const { tokens, tokenDim } = tokenShape(cfg);
  const rng = new E.Rng(0);
  const noise = Float32Array.from({ length: n * tokens * tokenDim }, () => rng.normal());
  const y = Int32Array.from({ length: n }, (_, i) => i % 10);
  writeFileSync(path.join(dir, 'noise.safetensors'), st.serializeSafetensors(new Map([['noise', st.fromFloat32(noise, [n, tokens, tokenDim])], ['y', st.fromInt32(y, [n])]])));
  process.stdout.write(JSON.stringify({ tokens, tokenDim, weights: path.resolve(weights), matmul: E.matmulBackend() }) + '\n');
}

type Contender = { id: string; label: string; threads: number; command: string; args: string[]; env: Record<string, string>; out: string };

function timeProcess(c: Contender): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    import('node:child_process').then(({ spawn }) => {
      const child = spawn(c.command, c.args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...c.env } });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(performance.now() - t0) : reject(new Error(`${c.label} failed (exit ${code}):\n${stderr.trim()}`))));
    }, reject);
  });
}

export async function main(args: string[]): Promise<void> {
  const c = defaultCommonFlags();
  let n = 1024;
  let cfgWeight = 2;
  eachFlag(
    args,
    (a, value) => {
      if (takeCommonFlag(a, value, c)) return true;
      if (a === '--n') n = Number(value());
      else if (a === '--cfg') cfgWeight = Number(value());
      else return false;
      return true;
    },
    '--n N, --cfg W, --rounds R, --json PATH, --python PATH, --torch-blas auto|system',
  );
  const rounds = c.rounds ?? (c.quick ? 1 : 3);
  const referenceDir = process.env.TARFLOW_REFERENCE_DIR;
  if (!referenceDir) throw new Error('set TARFLOW_REFERENCE_DIR to an apple/ml-tarflow checkout (it is run from there, never copied here)');
  const tv = torchVersion(c.python);
  if (!tv.ok) throw new Error(torchMissingNote(tv.why));
  const { env: torchChildEnv, blas } = torchEnv(c.torchBlas);
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'starflow-bench-sample-process-'));
  try {
    const prepped = await runChild<{ matmul: string; weights: string }>(process.execPath, tsxArgs(SELF, ['--prep', '--dir', tmp, '--n', String(n)]), 'prep');
    const contenders = [1, 2].flatMap((threads): Contender[] => [
      {
        id: `starflow-${threads}t`,
        label: `starflow sample, ${threads} thr`,
        threads,
        command: process.execPath,
        args: [path.join(ROOT, 'bin', 'starflow.js'), 'sample', '--model', path.join(tmp, 'model'), '--noise', path.join(tmp, 'noise.safetensors'), '--labels-key', 'y', '--cfg', String(cfgWeight), '--device', 'wasm', '--out', path.join(tmp, `ours-${threads}.safetensors`)],
        env: { STARFLOW_THREADS: String(threads) },
        out: path.join(tmp, `ours-${threads}.safetensors`),
      },
      {
        id: `reference-${threads}t`,
        label: `ml-tarflow reverse, ${threads} thr`,
        threads,
        command: c.python,
        args: [path.join(ROOT, 'bench', 'torch', 'reference_sample.py'), '--reference-dir', referenceDir, '--config', path.join(tmp, 'model', 'config.json'), '--weights', prepped.weights, '--noise', path.join(tmp, 'noise.safetensors'), '--cfg', String(cfgWeight), '--threads', String(threads), '--out', path.join(tmp, `reference-${threads}.f32`)],
        env: { ...torchChildEnv, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) },
        out: path.join(tmp, `reference-${threads}.f32`),
      },
    ]);
    const machine = machineInfo();
    console.log(`sample-process bench: ${n} samples, guidance ${cfgWeight}, ${rounds} round(s), ${machine.cores} cores, load ${machine.loadavg.map((l) => l.toFixed(2)).join(' ')}`);
    const times = new Map<string, number[]>(contenders.map((k) => [k.id, []]));
    for (let round = 1; round <= rounds; round++) {
      for (const k of contenders) {
        const ms = await timeProcess(k);
        times.get(k.id)!.push(ms);
        console.log(`round ${round}/${rounds}  ${k.label.padEnd(28)} ${fmt(ms / 1000, 2)} s`);
      }
    }
    // The outputs, compared: every contender against the reference at 1 thread.
    const { parseSafetensors, toFloat32 } = await import('../src/io/safetensors.js');
    const read = (k: Contender): Float32Array =>
      k.out.endsWith('.f32') ? new Float32Array(readFileSync(k.out).buffer.slice(0)) : toFloat32(parseSafetensors(new Uint8Array(readFileSync(k.out)), k.out).tensors.get('samples')!);
    const base = read(contenders.find((k) => k.id === 'reference-1t')!);
    const maxDiff = Object.fromEntries(
      contenders.map((k) => {
        const x = read(k);
        let d = x.length === base.length ? 0 : Infinity;
        for (let i = 0; i < x.length && d !== Infinity; i++) d = Math.max(d, Math.abs(x[i]! - base[i]!));
        return [k.id, d];
      }),
    );
    const medians = Object.fromEntries(contenders.map((k) => [k.id, median(times.get(k.id)!)]));
    const best = (prefix: string) => Math.min(...contenders.filter((k) => k.id.startsWith(prefix)).map((k) => medians[k.id]!));
    const ratio = best('starflow-') / best('reference-');
    const rows = contenders.map((k) => `| ${k.label} | ${fmt(medians[k.id]! / 1000, 2)} | ${times.get(k.id)!.map((t) => fmt(t / 1000, 2)).join(', ')} | ${fmt((n * 1000) / medians[k.id]!, 0)} | ${maxDiff[k.id]!.toExponential(1)} |`);
    const md = [
      `| process | median s | every round (s) | samples/s | max |Δ| vs ml-tarflow 1 thr |`,
      `| --- | ---: | --- | ---: | ---: |`,
      ...rows,
      '',
      `- **best starflow / best ml-tarflow (whole processes): ${fmt(ratio, 2)}×** (above 1× starflow is slower).`,
      `- ${n} samples at guidance ${cfgWeight} (TARFlow's rule on both sides), sequential KV-cached sampling, one batch; model: width 128, 2 heads of 64, 3 blocks × 2 layers, 16×16×3 in 4×4 patches (16 tokens of 48), 10 classes, initial weights with N(0, 0.01²) output projections.`,
      `- starflow: \`node bin/starflow.js sample --noise F --labels-key y --cfg ${cfgWeight} --device wasm --out F.safetensors\` with STARFLOW_THREADS = threads (a checkout: TypeScript through tsx); ${prepped.matmul === 'wasm' ? "every kernel on jax-js's wasm" : `matrix products on the engine's ${prepped.matmul} GEMM, and the kernels jax-js's wasm runs scalar (exp, log, reciprocals) or long elementwise ones on the addon's evaluator`}.`,
      `- ml-tarflow: its own Model.reverse from TARFLOW_REFERENCE_DIR, torch ${tv.version} on ${blas ? `OpenBLAS (${blas})` : 'the system libblas.so.3'}, einsum attention (torch 1.13 has no SDPA), weights from \`starflow export --format ml-tarflow\` loaded strictly.`,
      `- Interleaved rounds; machine load before: ${machine.loadavg.map((l) => l.toFixed(2)).join(' ')}.`,
    ].join('\n');
    console.log(`\n${md}`);
    writeReport('sample-process', { ...c, rounds }, { machine, jax: jaxVersion(), matmul: prepped.matmul, n, cfg: cfgWeight, model: SAMPLE_MODEL, torch: { version: tv.version, blas }, medians, times: Object.fromEntries(times), maxDiff, ratio }, md);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === SELF && process.argv.includes('--prep')) await prep(process.argv.slice(2));
