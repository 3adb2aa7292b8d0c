// The commit of the code that trains a model, recorded in its provenance.
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The commit of the code doing the training, when it runs from a starflow-ts checkout (null for an
 * installed package, which may sit inside a user's own repository); `dirty` when it has uncommitted changes.
 */
function codeVersion(): { commit: string | null; dirty: boolean | null } {
  const cwd = path.dirname(fileURLToPath(import.meta.url));
  const git = (...args: string[]) => execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
  try {
    if (realpathSync(git('rev-parse', '--show-toplevel')) !== realpathSync(path.resolve(cwd, '../..'))) return { commit: null, dirty: null };
    return { commit: git('rev-parse', 'HEAD'), dirty: git('status', '--porcelain', '--untracked-files=no').length > 0 };
  } catch {
    return { commit: null, dirty: null };
  }
}

export const CODE = codeVersion();
