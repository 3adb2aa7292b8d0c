// What STARFlow's options cost when sampling: mnist-starflow-pixel (start token, RoPE, softplus
// scales with soft clip, final norm) against mnist-bpd, the TARFlow preset of the same width and
// depth, sequential solver, guided (cfg 2, both branches), in one process on the whole machine,
// alternating rounds. Weights are each preset's initialisation (seed 0): sampling cost does not
// depend on their values. Writes bench/results/starflow-options-<date>-t<threads>.{json,md}.
//
//   npm run bench -- starflow [--rounds R] [--batch B,B]
//   STARFLOW_THREADS=1 npm run bench -- starflow --batch 1     (batch 1 is fastest on one thread here)
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { BENCH_DIR, median, fmt, machineInfo, jaxVersion } from './common.js';

export async function main(args: string[]): Promise<void> {
  const flag = (name: string, dflt: string) => {
    const i = args.indexOf(name);
    return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
  };
  const rounds = Number(flag('--rounds', '3'));
  const batches = flag('--batch', '64,1').split(',').map(Number);
  const { startNodeEngine, engineThreads } = await import('../src/engine/node.js');
  const device = await startNodeEngine({ device: 'wasm' });
  const { loadPreset } = await import('../src/train/presets.js');
  const { initModel } = await import('../src/models/registry.js');
  const { generate } = await import('../src/sampling/pipeline.js');
  const { tokenShape } = await import('../src/models/flow.js');
  const { release } = await import('../src/engine/index.js');

  const presets = ['mnist-bpd', 'mnist-starflow-pixel'] as const;
  const models = await Promise.all(presets.map(async (p) => initModel((await loadPreset(p)).model, 0)));
  const guidance = { weight: 2, rule: 'tarflow' as const, annealed: false, attnTemp: 1 };
  // Positions each block solves: T − 1 with TARFlow's pass-through token 0, T with a start token.
  const solved = models.map((m) => {
    const cfg = m.cfg as import('../src/models/flow.js').FlowConfig;
    return cfg.numBlocks * (tokenShape(cfg).tokens - (cfg.startToken ? 0 : 1));
  });
  const rows: { batch: number; preset: string; samplesPerSec: number; usPerSolvedToken: number; times: number[] }[] = [];
  for (const batch of batches) {
    const n = batch === 1 ? 8 : batch; // batch 1: eight one-sample calls per round
    const times: number[][] = presets.map(() => []);
    const run = async (k: number) => {
      const labels = Array.from({ length: n }, (_, i) => i % 10);
      const t0 = performance.now();
      await generate(models[k]!, { n, labels, guidance, seed: 0, batchSize: batch });
      return (performance.now() - t0) / 1000;
    };
    for (let k = 0; k < presets.length; k++) await run(k); // compile
    for (let r = 0; r < rounds; r++) for (let k = 0; k < presets.length; k++) times[k]!.push(await run(k));
    presets.forEach((p, k) => {
      const t = median(times[k]!);
      rows.push({ batch, preset: p, samplesPerSec: n / t, usPerSolvedToken: (t / n / solved[k]!) * 1e6, times: times[k]! });
    });
  }
  for (const m of models) release(m.params);

  const date = new Date().toISOString().slice(0, 10);
  const file = path.join(BENCH_DIR, 'results', `starflow-options-${date}-t${engineThreads}`);
  const ratio = (b: number) => {
    const [t, s] = presets.map((p) => rows.find((r) => r.batch === b && r.preset === p)!);
    return { batch: b, perToken: s!.usPerSolvedToken / t!.usPerSolvedToken, perSample: t!.samplesPerSec / s!.samplesPerSec };
  };
  const ratios = batches.map(ratio);
  const result = { date, machine: machineInfo(), jax: jaxVersion(), device, threads: engineThreads, rounds, guidance, solvedTokensPerSample: Object.fromEntries(presets.map((p, k) => [p, solved[k]])), rows, ratios };
  writeFileSync(`${file}.json`, JSON.stringify(result, null, 2) + '\n');
  const md = [
    `# STARFlow's options when sampling (${date})`,
    '',
    `\`${engineThreads === 1 ? 'STARFLOW_THREADS=1 ' : ''}npm run bench -- starflow --rounds ${rounds} --batch ${batches.join(',')}\`: sequential solver, guidance 2 (two branches), ${device} with ${engineThreads} threads, median of ${rounds} alternating rounds after one compile round; initial weights (seed 0). Per solved token: a start token makes every block solve all 49 tokens, TARFlow 48.`,
    '',
    '| batch | preset | samples/s | µs per solved token |',
    '| --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.batch} | ${r.preset} | ${fmt(r.samplesPerSec, 2)} | ${fmt(r.usPerSolvedToken, 1)} |`),
    '',
    ...ratios.map((q) => `Batch ${q.batch}: mnist-starflow-pixel costs **${q.perToken.toFixed(3)}×** per solved token (${q.perSample.toFixed(3)}× per sample) of mnist-bpd.`),
    '',
  ].join('\n');
  writeFileSync(`${file}.md`, md);
  console.log(md);
}
