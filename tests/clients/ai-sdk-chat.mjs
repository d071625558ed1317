// The AI SDK's own chat client against the gateway (tests/live/test_ai_sdk.py).
//
// `DefaultChatTransport` is what `useChat` uses: it POSTs the chat and parses the
// answer with the package's own event-stream parser and chunk schema (a chunk that
// fails the schema errors the stream); `readUIMessageStream` assembles the message
// as useChat does. One JSON object a line on stdout:
//   {"chunk": {...}}          each validated chunk, as it arrives
//   {"message": {...}}        the assembled UIMessage, at the end
//   {"chunkError": "..."}     an `error` chunk, as useChat's error sees it
//   {"streamError": "..."}    the stream failed (a chunk failed the schema, say)
//   {"requestError": "..."}   the request was refused (the transport's Error message)
//   {"noStream": true}        reconnectToStream: nothing to resume (204)
//   {"end": true}
//
// argv[2]: JSON {package: "ai" | "ai6" | "ai5-strict", api, action: "send" | "resume",
//                chatId, messages, body, headers}
const config = JSON.parse(process.argv[2]);
const { DefaultChatTransport, readUIMessageStream } = await import(config.package ?? 'ai');

const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');
const message = (error) => (error instanceof Error ? error.message : String(error));

const transport = new DefaultChatTransport({
  api: config.api,
  headers: config.headers ?? {},
  body: config.body ?? {},
});

let stream;
try {
  if (config.action === 'resume') {
    stream = await transport.reconnectToStream({ chatId: config.chatId });
  } else {
    stream = await transport.sendMessages({
      chatId: config.chatId,
      messages: config.messages,
      trigger: config.trigger ?? 'submit-message',
      messageId: config.messageId,
      abortSignal: undefined,
    });
  }
} catch (error) {
  print({ requestError: message(error) });
  print({ end: true });
  process.exit(0);
}
if (stream === null) {
  print({ noStream: true });
  print({ end: true });
  process.exit(0);
}

const [chunks, forMessage] = stream.tee();
const printing = (async () => {
  const reader = chunks.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      print({ chunk: value });
    }
  } catch (error) {
    print({ streamError: message(error) });
  }
})();

let last;
for await (const assembled of readUIMessageStream({
  message: config.continueMessage,
  stream: forMessage,
  onError: (error) => print({ chunkError: message(error) }),
})) {
  last = assembled;
}
await printing;
print({ message: last ?? null });
print({ end: true });
