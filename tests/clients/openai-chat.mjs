// The official `openai` npm package against the gateway's POST /v1/chat/completions
// (tests/live/test_openai_node.py). `new OpenAI({ baseURL, apiKey })`, nothing mocked.
// One JSON object a line on stdout:
//   {"chunk": {...}}       mode stream / cancel: each chunk as the SDK yields it
//   {"started": true, "stream_id": "..."}
//                          mode cancel: after the first non-empty content chunk; the
//                          id is the response's X-Stream-ID (`.withResponse()`)
//   {"result": {...}}      stream: {content, reasoning_content, refusal, tool_calls (per
//                          index: id, name, arguments), finish_reason, usage, chunks};
//                          helper: {message, finish_reason, usage} of finalChatCompletion();
//                          create: {object, message, finish_reason, usage}
//   {"error": {...}}       the request or the iteration threw: {class, status, code, type,
//                          param, message, body}; mode cancel prints it as how the
//                          iteration ended
//   {"end": true}
//
// argv[2]: JSON {baseURL, apiKey, mode: "stream" | "helper" | "create" | "error" | "cancel",
//                model, messages, tools, stream (mode error: true or false), params}
import OpenAI from 'openai';

const config = JSON.parse(process.argv[2]);
const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');

const client = new OpenAI({
  baseURL: config.baseURL,
  apiKey: config.apiKey ?? 'unused',
  maxRetries: 0,
  timeout: 20_000,
});

const params = {
  model: config.model,
  messages: config.messages ?? [{ role: 'user', content: 'hi' }],
  ...(config.tools ? { tools: config.tools } : {}),
  ...(config.params ?? {}),
};

function described(error) {
  return {
    class: error?.constructor?.name ?? typeof error,
    isAPIError: error instanceof OpenAI.APIError,
    status: error?.status ?? null,
    code: error?.code ?? null,
    type: error?.type ?? null,
    param: error?.param ?? null,
    message: error instanceof Error ? error.message : String(error),
    body: error?.error ?? null,
  };
}

// The chunks of a streamed completion, assembled as a client does.
function assembler() {
  const got = { content: '', reasoning_content: '', refusal: '', tool_calls: [],
                finish_reason: null, usage: null, chunks: 0 };
  return {
    got,
    add(chunk) {
      got.chunks += 1;
      if (chunk.usage) got.usage = chunk.usage;
      for (const choice of chunk.choices ?? []) {
        const delta = choice.delta ?? {};
        got.content += delta.content ?? '';
        got.reasoning_content += delta.reasoning_content ?? '';
        got.refusal += delta.refusal ?? '';
        for (const call of delta.tool_calls ?? []) {
          const slot = (got.tool_calls[call.index] ??= { index: call.index, id: null, name: null,
                                                          arguments: '', fragments: 0 });
          if (call.id) slot.id = call.id;
          if (call.function?.name) slot.name = call.function.name;
          if (call.function?.arguments) {
            slot.arguments += call.function.arguments;
            slot.fragments += 1;
          }
        }
        if (choice.finish_reason) got.finish_reason = choice.finish_reason;
      }
    },
  };
}

async function stream() {
  const chunks = await client.chat.completions.create({
    ...params, stream: true, stream_options: { include_usage: true },
  });
  const { got, add } = assembler();
  for await (const chunk of chunks) {
    print({ chunk });
    add(chunk);
  }
  print({ result: got });
}

async function helper() {
  const runner = client.chat.completions.stream(params);
  const final = await runner.finalChatCompletion();
  const choice = final.choices[0];
  print({ result: { message: choice.message, finish_reason: choice.finish_reason,
                    usage: final.usage ?? null } });
}

async function create() {
  const completion = await client.chat.completions.create({ ...params, stream: false });
  const choice = completion.choices[0];
  print({ result: { object: completion.object, id: completion.id, model: completion.model,
                    message: choice.message, finish_reason: choice.finish_reason,
                    usage: completion.usage ?? null } });
}

async function error() {
  const answer = await client.chat.completions.create({ ...params, stream: config.stream ?? false });
  if (config.stream ?? false) for await (const chunk of answer) print({ chunk });
  else print({ result: answer });
}

async function cancel() {
  const { data: chunks, response } = await client.chat.completions
    .create({ ...params, stream: true })
    .withResponse();
  let started = false;
  for await (const chunk of chunks) {
    print({ chunk });
    if (!started && chunk.choices?.[0]?.delta?.content) {
      started = true;
      print({ started: true, stream_id: response.headers.get('x-stream-id') });
    }
  }
  print({ result: { ended: 'complete' } });
}

const modes = { stream, helper, create, error, cancel };
try {
  if (!modes[config.mode]) throw new Error(`unknown mode ${config.mode}`);
  await modes[config.mode]();
} catch (caught) {
  print({ error: described(caught) });
}
print({ end: true });
