// The official ollama-js client against a real `lucidd --worker echo` on 127.0.0.1:0.
// Run by scripts/test: LUCIDD_BIN names the binary, NODE_PATH the installed packages.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startLucidd } from './daemon.mjs';

let daemon;
let client;

before(async () => {
  daemon = await startLucidd(() => ['--worker', 'echo']);
  client = daemon.client;
});

after(() => daemon.stop());

test('chat streams to completion', async () => {
  let text = '';
  let last;
  for await (const part of await client.chat({ model: 'echo', messages: [{ role: 'user', content: 'hi there' }], stream: true })) {
    text += part.message.content;
    last = part;
  }
  assert.equal(text, 'hi there');
  assert.equal(last.done, true);
  assert.equal(last.done_reason, 'stop');
});

test('pull streams to success', async () => {
  const statuses = [];
  for await (const part of await client.pull({ model: 'echo', stream: true })) statuses.push(part.status);
  assert.equal(statuses.at(-1), 'success');
});

test('generate, embed, list, show, ps, version', async () => {
  assert.equal((await client.generate({ model: 'echo', prompt: 'say this' })).response, 'say this');
  assert.equal((await client.embed({ model: 'echo', input: ['a', 'b'] })).embeddings.length, 2);
  assert.ok((await client.list()).models.some((m) => m.model === 'echo:latest'));
  assert.equal((await client.show({ model: 'echo' })).model_info['general.architecture'], 'echo');
  assert.equal((await client.ps()).models[0].name, 'echo:latest');
  assert.match((await client.version()).version, /^\d+\.\d+\.\d+$/);
});

test('copy and delete by name', async () => {
  await client.copy({ source: 'echo', destination: 'echo-js' });
  await client.delete({ model: 'echo-js' });
  await assert.rejects(client.delete({ model: 'echo-js' }), (err) => err.status_code === 404);
});

test('unknown model rejects with a ResponseError', async () => {
  await assert.rejects(
    client.chat({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (err) => err.name === 'ResponseError' && err.status_code === 404 && err.error.includes('no-such-model'),
  );
});
