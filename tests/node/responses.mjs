// The real Node `openai` SDK against Farebox, unchanged: chat, Responses (JSON, SSE, a
// function-tool round trip chained by previous_response_id), retrieve, input items, input
// token count, delete. Reads BASE_URL (ends in /v1), API_KEY, MODEL (a Farebox route) and
// optionally NEXT_MODEL (the route that answers the tool round trip's second turn; default
// MODEL) from the environment and prints ONE JSON object on stdout: one entry per step, each
// {ok: true, ...facts} or {ok: false, error, status}. tests/e2e/test_node_sdk.py asserts on it.
import OpenAI from "openai";

const { BASE_URL, API_KEY, MODEL } = process.env;
const NEXT_MODEL = process.env.NEXT_MODEL || MODEL;
if (!BASE_URL || !API_KEY || !MODEL) {
  console.error("responses.mjs needs BASE_URL, API_KEY and MODEL in the environment");
  process.exit(2);
}

// Every HTTP exchange the SDK makes, body included (read from a clone, so the SDK's own
// reading is untouched): the Python test validates each against OpenAI's spec.
const wire = [];
async function recordingFetch(url, init) {
  const response = await fetch(url, init);
  const exchange = {
    method: init?.method ?? "GET",
    path: new URL(url).pathname,
    status: response.status,
    content_type: response.headers.get("content-type") ?? "",
    request_id: response.headers.get("x-request-id"),
  };
  exchange.body = response.clone().text();
  wire.push(exchange);
  return response;
}

const client = new OpenAI({
  baseURL: BASE_URL,
  apiKey: API_KEY,
  maxRetries: 0,
  timeout: 15000,
  fetch: recordingFetch,
});
const WEATHER = {
  type: "function",
  name: "get_weather",
  description: "Current weather for a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  },
  strict: true,
};
const results = { sdk_version: OpenAI.VERSION ?? null };

// A failing step is recorded (the test names it) and the next steps still run.
async function step(name, body) {
  try {
    results[name] = { ok: true, ...(await body()) };
  } catch (err) {
    results[name] = { ok: false, error: String(err?.message ?? err), status: err?.status ?? null };
  }
}

// `output_text` is the SDK's convenience on create()/retrieve(); a Response inside a stream
// event is the raw object, so read its message items.
const textOf = (response) =>
  response.output_text ??
  response.output
    .filter((item) => item.type === "message")
    .flatMap((item) => item.content)
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");

await step("chat", async () => {
  const reply = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "Hello from Node" }],
    max_tokens: 5,
  });
  return { object: reply.object, text: reply.choices[0]?.message?.content ?? "" };
});

let created = null;
await step("create", async () => {
  const { data, response } = await client.responses
    .create({ model: MODEL, input: "Hello from Node", instructions: "Be brief." })
    .withResponse();
  created = data;
  return {
    id: data.id,
    object: data.object,
    status: data.status,
    text: textOf(data),
    output_types: data.output.map((item) => item.type),
    input_tokens: data.usage?.input_tokens ?? null,
    output_tokens: data.usage?.output_tokens ?? null,
    request_id: response.headers.get("x-request-id"),
  };
});

await step("stream", async () => {
  const stream = await client.responses.create({
    model: MODEL,
    input: [{ role: "user", content: [{ type: "input_text", text: "Stream to Node" }] }],
    stream: true,
  });
  const types = [];
  const sequence = [];
  let text = "";
  let final = null;
  for await (const event of stream) {
    types.push(event.type);
    sequence.push(event.sequence_number);
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.completed") final = event.response;
  }
  return { types, sequence, text, final_id: final?.id ?? null, final_text: final ? textOf(final) : null };
});

// The SDK's stream helper rebuilds the Response from the events (it throws on events that
// do not fit its snapshot), then hands back the final one.
await step("stream_helper", async () => {
  const stream = client.responses.stream({ model: MODEL, input: "Stream with the helper" });
  let text = "";
  stream.on("response.output_text.delta", (event) => {
    text += event.delta;
  });
  const final = await stream.finalResponse();
  return { text, final_text: final.output_text, status: final.status };
});

await step("stream_tool", async () => {
  const stream = await client.responses.create({
    model: MODEL,
    input: "Weather in Oslo, streamed?",
    tools: [WEATHER],
    stream: true,
  });
  const types = [];
  let args = "";
  let final = null;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.function_call_arguments.delta") args += event.delta;
    if (event.type === "response.completed") final = event.response;
  }
  return {
    types,
    arguments: JSON.parse(args),
    final_types: final ? final.output.map((item) => item.type) : null,
  };
});

let toolTurns = null;
await step("tool_round_trip", async () => {
  const first = await client.responses.create({
    model: MODEL,
    input: "What is the weather in Paris?",
    tools: [WEATHER],
  });
  const call = first.output.find((item) => item.type === "function_call");
  if (!call) throw new Error(`no function_call in ${JSON.stringify(first.output)}`);
  const { data: second, response: raw } = await client.responses
    .create({
      model: NEXT_MODEL,
      previous_response_id: first.id,
      input: [{ type: "function_call_output", call_id: call.call_id, output: "Sunny, 21 C" }],
      tools: [WEATHER],
    })
    .withResponse();
  toolTurns = { first: first.id, second: second.id };
  return {
    first_id: first.id,
    call_name: call.name,
    call_arguments: JSON.parse(call.arguments),
    second_id: second.id,
    second_previous: second.previous_response_id ?? null,
    second_output_types: second.output.map((item) => item.type),
    second_text: textOf(second),
    second_deployment: raw.headers.get("x-farebox-deployment"),
  };
});

await step("retrieve", async () => {
  const found = await client.responses.retrieve(created.id);
  return { id: found.id, status: found.status, text: textOf(found) };
});

await step("input_items", async () => {
  const page = await client.responses.inputItems.list(toolTurns.second);
  const items = [];
  for await (const item of page) items.push(item.type);
  return { types: items };
});

await step("input_tokens", async () => {
  const counted = await client.responses.inputTokens.count({ model: MODEL, input: "Count me" });
  return { object: counted.object, input_tokens: counted.input_tokens };
});

await step("delete", async () => {
  const deleted = await client.responses.delete(created.id);
  let after = null;
  try {
    await client.responses.retrieve(created.id);
    after = 200;
  } catch (err) {
    after = err?.status ?? String(err);
  }
  // The SDK's delete resolves to undefined (the body is not parsed): the status after is the fact.
  return { returned: deleted ?? null, retrieve_after: after };
});

for (const exchange of wire) exchange.body = await exchange.body;
results.wire = wire;
process.stdout.write(JSON.stringify(results) + "\n");
