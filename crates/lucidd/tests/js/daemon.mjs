// Starts a real lucidd (LUCIDD_BIN) on 127.0.0.1:0 in a temporary directory and gives an
// ollama-js client for it; `stop` ends it and removes the directory.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ollama } from 'ollama';

// `workerArgs(dir)` gives the worker flags; `dir` is the daemon's temporary directory.
export async function startLucidd(workerArgs) {
  const dir = mkdtempSync(join(tmpdir(), 'lucidd-js-'));
  const addrFile = join(dir, 'addr');
  const daemon = spawn(process.env.LUCIDD_BIN, [...workerArgs(dir), '--no-p2p', '--listen', '127.0.0.1:0',
    '--data-dir', join(dir, 'data'), '--addr-file', addrFile], { stdio: 'ignore' });
  const deadline = Date.now() + 30000;
  while (!existsSync(addrFile)) {
    if (Date.now() > deadline) throw new Error('lucidd did not start');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const client = new Ollama({ host: `http://${readFileSync(addrFile, 'utf8').trim()}` });
  const stop = () => {
    daemon.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  };
  return { client, stop };
}
