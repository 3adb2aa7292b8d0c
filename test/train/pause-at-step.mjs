// Test hook for test/train/resume.test.ts, preloaded into `starflow train` children with
// `node --import`: it makes the trainer stop at a chosen step and wait there, so that a test can
// kill or interrupt a run at an exact step however fast or slow the machine is (instead of racing
// a running process with a timer or a polling loop). Inert unless STARFLOW_TEST_PAUSE_AT_STEP is set.
//
// With STARFLOW_TEST_PAUSE_AT_STEP=K, once the trainer has appended step K's line to log.jsonl
// (it does so with fs/promises' appendFile after every logged step, before any checkpoint of that
// step), the append does not return: the hook writes `starflow-test: paused at step K` to stderr
// and waits, with the process kept alive, until the process gets SIGINT (the CLI's own handler
// sees it too and asks the trainer to stop); then the append returns and training goes on, so
// the trainer stops at step K. A SIGKILL while paused kills the run between steps K and K + 1.
// Plain JavaScript so that it loads before tsx is registered (bin/starflow.js registers it).
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

const at = Number(process.env.STARFLOW_TEST_PAUSE_AT_STEP || 0);
if (Number.isInteger(at) && at > 0) {
  const appendFile = fs.promises.appendFile;
  let paused = false;
  fs.promises.appendFile = async function (file, data, ...rest) {
    await appendFile.call(this, file, data, ...rest);
    if (paused || !String(file).endsWith('log.jsonl') || typeof data !== 'string') return;
    let line;
    try {
      line = JSON.parse(data);
    } catch {
      return;
    }
    if (line.step !== at || typeof line.loss !== 'number' || line.skipped) return;
    paused = true;
    const keepAlive = setInterval(() => {}, 60_000);
    const resume = new Promise((resolve) => process.once('SIGINT', resolve));
    process.stderr.write(`starflow-test: paused at step ${at}\n`);
    await resume;
    clearInterval(keepAlive);
  };
  // `import { appendFile } from 'node:fs/promises'` (the trainer's) reads the patched function.
  syncBuiltinESMExports();
}
