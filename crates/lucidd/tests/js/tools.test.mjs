// ollama-js reads the tool calls and reasoning of the real model: Gemma 3 270M through
// llama-server, with the test chat templates (PHASE_TEMPLATES) beside it as `agent` and
// `thinker`. Run by scripts/test, which sets PHASE_TEST_MODEL, LLAMA_SERVER_BINARY and LUCIDD_BIN.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { startLucidd } from './daemon.mjs';

let daemon;
let client;

before(async () => {
  daemon = await startLucidd((dir) => {
    const models = join(dir, 'models');
    mkdirSync(models);
    for (const [name, template] of [['agent', 'tools.jinja'], ['thinker', 'think.jinja']]) {
      symlinkSync(process.env.PHASE_TEST_MODEL, join(models, `${name}.gguf`));
      copyFileSync(join(process.env.PHASE_TEMPLATES, template), join(models, `${name}.jinja`));
    }
    return ['--worker', 'llama-cpp', '--model-dir', models, '--llama-server-binary', process.env.LLAMA_SERVER_BINARY];
  });
  client = daemon.client;
});

after(() => daemon.stop());

const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Get the current weather for a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
const history = [
  { role: 'user', content: 'What is the weather in Rome?' },
  { role: 'assistant', content: '', tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Rome' } } }] },
  { role: 'tool', content: 'sunny, 24 C', tool_name: 'get_weather' },
  { role: 'assistant', content: 'It is sunny in Rome, 24 C.' },
  { role: 'user', content: 'What is the weather in Paris?' },
];
const options = { temperature: 0, seed: 42, num_predict: 80 };

test('a streamed tool call from the model', async () => {
  const calls = [];
  let last;
  for await (const part of await client.chat({ model: 'agent', messages: history, tools, options, stream: true })) {
    calls.push(...(part.message.tool_calls ?? []));
    last = part;
  }
  assert.equal(calls.length, 1);
  assert.equal(calls[0].function.name, 'get_weather');
  assert.deepEqual(calls[0].function.arguments, { city: 'Paris' });
  assert.equal(last.done_reason, 'stop');
});

test('reasoning in message.thinking', async () => {
  const reply = await client.chat({ model: 'thinker', think: true, options: { ...options, num_predict: 24 }, messages: [
    { role: 'user', content: 'What is 1 + 1?' },
    { role: 'assistant', thinking: 'One plus one makes two.', content: '1 + 1 = 2.' },
    { role: 'user', content: 'What is 2 + 3?' },
  ] });
  assert.ok(reply.message.thinking.length > 0);
  assert.ok(!reply.message.content.includes('<think>'));
});
