#!/usr/bin/env node
// Test tooling only: serves one small GGUF model over the Ollama and OpenAI chat APIs on 127.0.0.1,
// so end-to-end tests can run the llm service against a real model without a real model server.
//
// stdout carries exactly one line, `listening <port>`, once the model is loaded; everything else goes
// to stderr. Run scripts/fetch-model first: it caches the model and this script's npm install.

import { randomBytes } from "node:crypto";
import http from "node:http";
import os from "node:os";
import path from "node:path";

import { BadRequestError, BusyError, ClientGoneError, Model, stopList } from "./model.js";

const MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MAX_BODY_BYTES = 8 * 1024 * 1024;

const USAGE = `usage: server.js [options]
  --port N            port on 127.0.0.1; 0 picks a free one (default 0)
  --model-name NAME   name the model is served under (default smollm2)
  --model PATH        GGUF file (default <cache>/${MODEL_FILE})
  --modules DIR       folder holding node_modules/node-llama-cpp (default <cache>/model-server)
  --max-tokens N      cap on num_predict / max_tokens, also the default (default 256)
  --context-size N    context window in tokens (default 8192, at most the model's)
  --queue N           requests that may wait behind the running one; more get 503 (default 16)
  --threads N         CPU threads for llama.cpp (default 1; see the README before raising it)
  --max-string-length N
                      longest string a JSON schema grammar allows where the schema sets no
                      maxLength; 0 = unbounded (default 400)
<cache> is $AIVENTBUS_MODEL_CACHE, or ~/.cache/aiventbus-test-model.`;

function log(message, fields = {}) {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), message, ...fields })}\n`);
}

function fail(message) {
  process.stderr.write(`model-server: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const cache = process.env.AIVENTBUS_MODEL_CACHE || path.join(os.homedir(), ".cache", "aiventbus-test-model");
  const options = {
    port: 0,
    modelName: "smollm2",
    model: path.join(cache, MODEL_FILE),
    modules: path.join(cache, "model-server"),
    maxTokens: 256,
    contextSize: 8192,
    queue: 16,
    // One thread: llama.cpp's threads meet at a spinning barrier every step, so when other
    // processes (the system under test) share the cores, 2 threads on 2 cores ran 8-20x slower
    // than 1 (2-6 vs 36-60 tokens/s, measured); pass --threads to use more on an idle machine.
    threads: 1,
    maxStringLength: 400,
  };
  const integerFlags = {
    "--port": "port",
    "--max-tokens": "maxTokens",
    "--context-size": "contextSize",
    "--queue": "queue",
    "--threads": "threads",
    "--max-string-length": "maxStringLength",
  };
  const stringFlags = { "--model-name": "modelName", "--model": "model", "--modules": "modules" };
  for (let index = 0; index < argv.length; index += 1) {
    const flag = argv[index];
    if (flag === "--help" || flag === "-h") {
      process.stderr.write(`${USAGE}\n`);
      process.exit(0);
    }
    const value = argv[index + 1];
    if (value === undefined || !(flag in integerFlags || flag in stringFlags)) {
      fail(`bad argument ${JSON.stringify(flag)}\n${USAGE}`);
    }
    index += 1;
    if (flag in stringFlags) {
      options[stringFlags[flag]] = value;
      continue;
    }
    const number = Number(value);
    const minimum = ["--port", "--queue", "--max-string-length"].includes(flag) ? 0 : 1;
    if (!Number.isInteger(number) || number < minimum || (flag === "--port" && number > 65535)) {
      fail(`${flag} wants an integer >= ${minimum}, got ${JSON.stringify(value)}`);
    }
    options[integerFlags[flag]] = number;
  }
  return options;
}

function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    request.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(Object.assign(new BadRequestError("request body too large"), { status: 413 }));
        request.destroy();
        return;
      }
      chunks.push(chunk);
    });
    request.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    request.on("error", reject);
  });
}

async function readJson(request) {
  const body = await readBody(request);
  let value;
  try {
    value = body.trim() === "" ? {} : JSON.parse(body);
  } catch (error) {
    throw new BadRequestError(`invalid JSON body: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new BadRequestError("request body must be a JSON object");
  }
  return value;
}

function sendJson(response, status, value) {
  const body = JSON.stringify(value);
  response.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(body),
  });
  response.end(body);
}

function statusOf(error) {
  if (error.status) return error.status;
  if (error instanceof BadRequestError) return 400;
  if (error instanceof BusyError) return 503;
  return 500;
}

// Aborted when the client closes the connection before the response is complete.
function clientSignal(request, response) {
  const controller = new AbortController();
  response.on("close", () => {
    if (!response.writableFinished) controller.abort(new Error("client went away"));
  });
  return controller.signal;
}

const nanosecondsToMs = (nanoseconds) => Math.round(Number(nanoseconds) / 1e6);

// --- Ollama ---

function ollamaError(response, status, message) {
  sendJson(response, status, { error: message });
}

function ollamaTags(model) {
  return {
    models: [
      {
        name: model.options.modelName,
        model: model.options.modelName,
        modified_at: model.modifiedAt,
        size: model.size,
        digest: model.digest,
        details: model.details(),
      },
    ],
  };
}

function ollamaFormat(format) {
  if (format === undefined || format === null || format === "") return undefined;
  if (format === "json") return "json";
  if (typeof format === "object" && !Array.isArray(format)) return format;
  throw new BadRequestError(`invalid format ${JSON.stringify(format)}: want "json" or a JSON schema object`);
}

async function ollamaChat(model, request, response) {
  const body = await readJson(request);
  if (typeof body.model !== "string" || body.model === "") {
    return ollamaError(response, 400, "model is required");
  }
  if (!model.serves(body.model)) return ollamaError(response, 404, `model "${body.model}" not found`);
  const options = body.options ?? {};
  const stream = body.stream !== false;
  const base = () => ({ model: body.model, created_at: new Date().toISOString() });
  const message = (content) => ({ message: { role: "assistant", content } });
  if (Array.isArray(body.messages) && body.messages.length === 0) {
    // Ollama answers an empty chat by (re)loading the model.
    return sendJson(response, 200, { ...base(), ...message(""), done_reason: "load", done: true });
  }
  const signal = clientSignal(request, response);
  const generation = {
    messages: body.messages,
    format: ollamaFormat(body.format),
    sampling: {
      temperature: options.temperature,
      topP: options.top_p,
      topK: options.top_k,
      seed: options.seed,
      repeatPenalty: options.repeat_penalty,
      repeatLastN: options.repeat_last_n,
      frequencyPenalty: options.frequency_penalty,
      presencePenalty: options.presence_penalty,
    },
    stop: stopList(options.stop),
    maxTokens: options.num_predict,
    signal,
  };
  const final = (result) => ({
    done: true,
    done_reason: result.finish,
    total_duration: Number(result.timings.total),
    load_duration: 0,
    prompt_eval_count: result.promptTokens,
    prompt_eval_duration: Number(result.timings.promptEval),
    eval_count: result.completionTokens,
    eval_duration: Number(result.timings.eval),
  });
  if (!stream) {
    const result = await model.generate({ ...generation, onText: () => {} });
    return sendJson(response, 200, { ...base(), ...message(result.text), ...final(result) });
  }
  let started = false;
  const writeLine = (value) => {
    if (!started) {
      response.writeHead(200, { "content-type": "application/x-ndjson" });
      started = true;
    }
    response.write(`${JSON.stringify(value)}\n`);
  };
  try {
    const result = await model.generate({
      ...generation,
      onText: (text) => writeLine({ ...base(), ...message(text), done: false }),
    });
    writeLine({ ...base(), ...message(""), ...final(result) });
    response.end();
  } catch (error) {
    if (!started) throw error;
    log("generation failed mid-stream", { error: error.message });
    writeLine({ error: error.message });
    response.end();
  }
}

// --- OpenAI ---

function openaiError(response, status, message, code = null) {
  const type = status >= 500 ? "server_error" : "invalid_request_error";
  sendJson(response, status, { error: { message, type, param: null, code } });
}

function openaiFormat(responseFormat) {
  if (responseFormat === undefined || responseFormat === null) return undefined;
  switch (responseFormat.type) {
    case "text":
      return undefined;
    case "json_object":
      return "json";
    case "json_schema": {
      const schema = responseFormat.json_schema?.schema;
      if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
        throw new BadRequestError("response_format.json_schema.schema must be a JSON schema object");
      }
      return schema;
    }
    default:
      throw new BadRequestError(
        `response_format.type ${JSON.stringify(responseFormat.type)} is not one of text, json_object, json_schema`,
      );
  }
}

async function openaiChat(model, request, response) {
  const body = await readJson(request);
  if (typeof body.model !== "string" || body.model === "") {
    return openaiError(response, 400, "model is required", "missing_model");
  }
  if (!model.serves(body.model)) {
    return openaiError(response, 404, `The model \`${body.model}\` does not exist.`, "model_not_found");
  }
  if (!Array.isArray(body.messages) || body.messages.length === 0) {
    return openaiError(response, 400, "messages must be a non-empty array", "invalid_messages");
  }
  if (body.n !== undefined && body.n !== null && body.n !== 1) {
    return openaiError(response, 400, "only n = 1 is supported", "invalid_n");
  }
  const signal = clientSignal(request, response);
  const id = `chatcmpl-${randomBytes(12).toString("hex")}`;
  const created = Math.floor(Date.now() / 1000);
  const generation = {
    messages: body.messages,
    format: openaiFormat(body.response_format),
    sampling: {
      temperature: body.temperature,
      topP: body.top_p,
      seed: body.seed,
      frequencyPenalty: body.frequency_penalty,
      presencePenalty: body.presence_penalty,
    },
    stop: stopList(body.stop),
    maxTokens: body.max_completion_tokens ?? body.max_tokens,
    signal,
  };
  const usage = (result) => ({
    prompt_tokens: result.promptTokens,
    completion_tokens: result.completionTokens,
    total_tokens: result.promptTokens + result.completionTokens,
  });
  if (body.stream !== true) {
    const result = await model.generate({ ...generation, onText: () => {} });
    return sendJson(response, 200, {
      id,
      object: "chat.completion",
      created,
      model: body.model,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: result.text },
          logprobs: null,
          finish_reason: result.finish,
        },
      ],
      usage: usage(result),
    });
  }
  const chunk = (delta, finishReason = null) => ({
    id,
    object: "chat.completion.chunk",
    created,
    model: body.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
  });
  let started = false;
  const writeEvent = (value) => {
    if (!started) {
      response.writeHead(200, {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        connection: "keep-alive",
      });
      started = true;
      response.write(`data: ${JSON.stringify(chunk({ role: "assistant", content: "" }))}\n\n`);
    }
    response.write(`data: ${typeof value === "string" ? value : JSON.stringify(value)}\n\n`);
  };
  try {
    const result = await model.generate({
      ...generation,
      onText: (text) => writeEvent(chunk({ content: text })),
    });
    writeEvent(chunk({}, result.finish));
    if (body.stream_options?.include_usage === true) {
      // The usage chunk of stream_options.include_usage: no choices, totals only.
      writeEvent({ ...chunk({}), choices: [], usage: usage(result) });
    }
    writeEvent("[DONE]");
    response.end();
  } catch (error) {
    if (!started) throw error;
    log("generation failed mid-stream", { error: error.message });
    writeEvent({ error: { message: error.message, type: "server_error", param: null, code: null } });
    response.end();
  }
}

function openaiModels(model) {
  return {
    object: "list",
    data: [
      {
        id: model.options.modelName,
        object: "model",
        created: Math.floor(Date.parse(model.modifiedAt) / 1000),
        owned_by: "local",
      },
    ],
  };
}

// --- routing ---

const ROUTES = {
  "GET /": (model, request, response) => {
    response.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
    response.end("Ollama is running");
  },
  "GET /api/version": (model, request, response) => sendJson(response, 200, { version: "0.0.0-aiventbus-test" }),
  "GET /api/tags": (model, request, response) => sendJson(response, 200, ollamaTags(model)),
  "POST /api/chat": ollamaChat,
  "GET /v1/models": (model, request, response) => sendJson(response, 200, openaiModels(model)),
  "POST /v1/chat/completions": openaiChat,
};

async function handle(model, request, response) {
  const started = process.hrtime.bigint();
  const pathname = new URL(request.url, "http://127.0.0.1").pathname.replace(/\/+$/, "") || "/";
  const openai = pathname.startsWith("/v1/");
  const route = ROUTES[`${request.method} ${pathname}`];
  try {
    if (route === undefined) {
      const knownPath = Object.keys(ROUTES).some((key) => key.endsWith(` ${pathname}`));
      const [status, message] = knownPath ? [405, "method not allowed"] : [404, `no route ${pathname}`];
      if (openai) openaiError(response, status, message, null);
      else ollamaError(response, status, message);
    } else {
      await route(model, request, response);
    }
  } catch (error) {
    if (error instanceof ClientGoneError) {
      response.statusCode = 499;
      return;
    }
    const status = statusOf(error);
    if (status >= 500 && !(error instanceof BusyError)) {
      log("request failed", { path: pathname, error: error.stack });
    }
    if (response.headersSent) response.end();
    else if (openai) openaiError(response, status, error.message, status === 503 ? "server_busy" : null);
    else ollamaError(response, status, error.message);
  } finally {
    log("request", {
      method: request.method,
      path: pathname,
      status: response.statusCode,
      ms: nanosecondsToMs(process.hrtime.bigint() - started),
    });
  }
}

async function main() {
  // Anything a library prints with console.log would break the one-line stdout contract.
  console.log = console.error;
  console.info = console.error;
  console.debug = console.error;
  const options = parseArgs(process.argv.slice(2));
  const model = await Model.load(options, log);
  const server = http.createServer((request, response) => {
    handle(model, request, response);
  });
  server.on("error", (error) => fail(`cannot listen on 127.0.0.1:${options.port}: ${error.message}`));
  server.listen(options.port, "127.0.0.1", () => {
    process.stdout.write(`listening ${server.address().port}\n`);
    log("listening", { address: `127.0.0.1:${server.address().port}`, model_name: options.modelName });
  });
  // Test tooling holds nothing worth draining: stop listening and exit at once.
  const stop = (signalName) => {
    log("stopping", { signal: signalName });
    server.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((error) => fail(error.stack ?? String(error)));
