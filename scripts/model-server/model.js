// The loaded model: one llama.cpp context with a single sequence, so one generation at a time
// behind a bounded FIFO gate, and the mapping of chat requests onto node-llama-cpp's LlamaChat.

import { createHash } from "node:crypto";
import { createReadStream, existsSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { toGrammarSchema } from "./schema.js";

const GRAMMAR_CACHE_ENTRIES = 32;

export class BusyError extends Error {}
export class BadRequestError extends Error {}
// The client closed the connection while its request waited; logged as 499, nothing is sent.
export class ClientGoneError extends Error {}

// node-llama-cpp is ESM-only and ESM ignores NODE_PATH, so it is imported by file URL from the
// install scripts/fetch-model made, falling back to a node_modules beside this script.
async function importNodeLlamaCpp(modulesDirectory) {
  const candidates = [modulesDirectory, path.dirname(fileURLToPath(import.meta.url))];
  for (const directory of candidates) {
    if (!existsSync(path.join(directory, "node_modules", "node-llama-cpp"))) continue;
    const resolved = createRequire(path.join(directory, "package.json")).resolve("node-llama-cpp");
    return import(pathToFileURL(resolved).href);
  }
  const where = candidates.join(" or ");
  throw new Error(`node-llama-cpp is not installed under ${where}; run scripts/fetch-model first`);
}

function sha256File(file) {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(file)
      .on("data", (chunk) => hash.update(chunk))
      .on("error", reject)
      .on("end", () => resolve(hash.digest("hex")));
  });
}

// First come, first served admission to the single sequence, with a bounded waiting list.
class Gate {
  constructor(limit) {
    this.limit = limit;
    this.busy = false;
    this.waiting = [];
  }

  // Resolves to a release function, or null when `limit` requests already wait (overflow: 503).
  // A waiter whose signal aborts leaves the queue and resolves to null too.
  acquire(signal) {
    if (!this.busy) {
      this.busy = true;
      return Promise.resolve(() => this.release());
    }
    if (signal.aborted || this.waiting.length >= this.limit) return Promise.resolve(null);
    return new Promise((resolve) => {
      const waiter = {
        grant: () => {
          signal.removeEventListener("abort", onAbort);
          resolve(() => this.release());
        },
      };
      const onAbort = () => {
        this.waiting = this.waiting.filter((item) => item !== waiter);
        resolve(null);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  release() {
    const next = this.waiting.shift();
    if (next === undefined) this.busy = false;
    else next.grant();
  }
}

export class Model {
  // `log(message, fields)` receives llama.cpp's warnings and the load summary.
  static async load(options, log) {
    const started = process.hrtime.bigint();
    const library = await importNodeLlamaCpp(options.modules);
    const { getLlama, LlamaChat, LlamaLogLevel, resolveChatWrapper } = library;
    if (!existsSync(options.model)) {
      throw new Error(`model file ${options.model} is missing; run scripts/fetch-model first`);
    }
    // build: "never" and skipDownload: use the prebuilt binary from @node-llama-cpp/linux-x64 or
    // fail; never compile llama.cpp. gpu: false skips probing for CUDA/Vulkan builds we never install.
    const llama = await getLlama({
      build: "never",
      skipDownload: true,
      gpu: false,
      maxThreads: options.threads,
      logLevel: LlamaLogLevel.warn,
      logger: (level, message) => log("llama.cpp", { level, text: message.trim() }),
    });
    const [model, digest] = await Promise.all([
      llama.loadModel({ modelPath: options.model }),
      sha256File(options.model),
    ]);
    const contextSize = Math.min(options.contextSize, model.trainContextSize);
    // threads must be given here too: the context's own default is not the core count.
    const context = await model.createContext({ contextSize, sequences: 1, threads: options.threads });
    // Resolved once: resolving per request re-reads the GGUF's template.
    const chatWrapper = resolveChatWrapper(model);
    const chat = new LlamaChat({ contextSequence: context.getSequence(), chatWrapper });
    log("model loaded", {
      model: options.model,
      chat_wrapper: chatWrapper.wrapperName,
      context_size: contextSize,
      threads: options.threads,
      load_ms: Math.round(Number(process.hrtime.bigint() - started) / 1e6),
    });
    return new Model({ options, llama, model, chat, chatWrapper, digest });
  }

  constructor({ options, llama, model, chat, chatWrapper, digest }) {
    this.options = options;
    this.llama = llama;
    this.model = model;
    this.chat = chat;
    this.chatWrapper = chatWrapper;
    this.digest = digest;
    this.size = statSync(options.model).size;
    this.modifiedAt = statSync(options.model).mtime.toISOString();
    this.gate = new Gate(options.queue);
    this.grammars = new Map();
  }

  names() {
    return [this.options.modelName, `${this.options.modelName}:latest`];
  }

  serves(name) {
    return this.names().includes(name);
  }

  details() {
    const metadata = this.model.fileInfo?.metadata ?? {};
    const architecture = metadata.general?.architecture ?? "unknown";
    const fileTypeMatch = /Q\d_\w+|F16|F32|BF16/i.exec(path.basename(this.options.model));
    return {
      parent_model: "",
      format: "gguf",
      family: architecture,
      families: [architecture],
      parameter_size: metadata.general?.size_label ?? "",
      quantization_level: fileTypeMatch ? fileTypeMatch[0].toUpperCase() : "",
    };
  }

  // format: undefined (free text), "json" (any JSON object) or a JSON schema object.
  async grammarFor(format) {
    if (format === undefined) return undefined;
    const key = format === "json" ? "json" : JSON.stringify(format);
    const cached = this.grammars.get(key);
    if (cached !== undefined) return cached;
    let grammar;
    if (format === "json") {
      grammar = await this.llama.getGrammarFor("json");
    } else {
      try {
        grammar = await this.llama.createGrammarForJsonSchema(
          toGrammarSchema(format, { maxStringLength: this.options.maxStringLength }),
        );
      } catch (error) {
        throw new BadRequestError(`unsupported JSON schema: ${error.message}`);
      }
    }
    if (this.grammars.size >= GRAMMAR_CACHE_ENTRIES) {
      this.grammars.delete(this.grammars.keys().next().value);
    }
    this.grammars.set(key, grammar);
    return grammar;
  }

  maxTokens(requested) {
    const cap = this.options.maxTokens;
    return Number.isInteger(requested) && requested > 0 ? Math.min(requested, cap) : cap;
  }

  // Runs one chat completion; onText gets each piece of text as it is generated.
  // Returns { text, promptTokens, completionTokens, finish: "stop"|"length", timings (ns) }.
  async generate({ messages, format, sampling, stop, maxTokens, signal, onText }) {
    const history = toChatHistory(messages);
    const grammar = await this.grammarFor(format);
    const release = await this.gate.acquire(signal);
    if (release === null) {
      if (signal.aborted) throw new ClientGoneError("client went away while queued");
      throw new BusyError("server busy: too many requests waiting for the model");
    }
    try {
      const started = process.hrtime.bigint();
      let firstTextAt;
      const meterBefore = this.chat.sequence.tokenMeter.getState();
      const response = await this.chat.generateResponse(history, {
        grammar,
        maxTokens: this.maxTokens(maxTokens),
        ...samplingOptions(sampling),
        customStopTriggers: stop.length > 0 ? stop : undefined,
        signal,
        stopOnAbortSignal: true,
        onTextChunk: (text) => {
          firstTextAt ??= process.hrtime.bigint();
          if (text !== "") onText(text);
        },
      });
      const finished = process.hrtime.bigint();
      firstTextAt ??= finished;
      const used = this.chat.sequence.tokenMeter.diff(meterBefore);
      // The meter counts only tokens actually evaluated, and the sequence reuses a matching prefix
      // from the previous request, so the prompt is counted by rendering it.
      const promptTokens = this.chatWrapper
        .generateContextState({ chatHistory: history })
        .contextText.tokenize(this.model.tokenizer).length;
      return {
        text: response.response,
        promptTokens,
        completionTokens: used.usedOutputTokens,
        finish: response.metadata.stopReason === "maxTokens" ? "length" : "stop",
        timings: {
          total: finished - started,
          promptEval: firstTextAt - started,
          eval: finished - firstTextAt,
        },
      };
    } finally {
      release();
    }
  }
}

// Request sampling fields -> LlamaChat options. Unset fields take Ollama's defaults, for both
// APIs: the repeat penalty (1.1 over the last 64 tokens) is what keeps a 135M model from looping.
function samplingOptions(sampling) {
  const number = (value, fallback) => (typeof value === "number" && Number.isFinite(value) ? value : fallback);
  const positiveInteger = (value) => (Number.isInteger(value) && value > 0 ? value : undefined);
  const penalty = number(sampling.repeatPenalty, 1.1);
  const frequency = number(sampling.frequencyPenalty, 0);
  const presence = number(sampling.presencePenalty, 0);
  const repeatPenalty = {
    lastTokens: positiveInteger(sampling.repeatLastN) ?? 64,
    penalty,
    frequencyPenalty: frequency || undefined,
    presencePenalty: presence || undefined,
  };
  return {
    temperature: Math.max(0, number(sampling.temperature, 0.8)),
    topP: number(sampling.topP, undefined),
    topK: positiveInteger(sampling.topK),
    seed: Number.isInteger(sampling.seed) ? sampling.seed : undefined,
    repeatPenalty: penalty === 1 && frequency === 0 && presence === 0 ? false : repeatPenalty,
  };
}

// Chat messages (Ollama and OpenAI share the shape) -> node-llama-cpp ChatHistoryItem[].
export function toChatHistory(messages) {
  if (!Array.isArray(messages)) throw new BadRequestError("messages must be an array");
  const history = [];
  for (const [index, message] of messages.entries()) {
    if (message === null || typeof message !== "object") {
      throw new BadRequestError(`messages[${index}] is not an object`);
    }
    const text = contentText(message.content, index);
    switch (message.role) {
      case "system":
      case "developer":
        history.push({ type: "system", text });
        break;
      case "user":
        history.push({ type: "user", text });
        break;
      case "assistant":
        history.push({ type: "model", response: [text] });
        break;
      case "tool": {
        // ChatML has no tool role; the result reaches the model as a user turn.
        const name = typeof message.name === "string" ? ` (${message.name})` : "";
        history.push({ type: "user", text: `Tool result${name}:\n${text}` });
        break;
      }
      default: {
        const role = JSON.stringify(message.role);
        throw new BadRequestError(`messages[${index}].role ${role} is not one of system, user, assistant, tool`);
      }
    }
  }
  // The model answers in a new, empty response turn; a trailing assistant message is continued.
  if (history.length === 0 || history.at(-1).type !== "model") history.push({ type: "model", response: [] });
  return history;
}

function contentText(content, index) {
  if (content === undefined || content === null) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    const texts = content.map((part) => (part?.type === "text" && typeof part.text === "string" ? part.text : ""));
    return texts.join("");
  }
  throw new BadRequestError(`messages[${index}].content must be a string or an array of parts`);
}

export function stopList(value) {
  if (value === undefined || value === null) return [];
  const list = [value].flat();
  if (!list.every((item) => typeof item === "string" && item.length > 0)) {
    throw new BadRequestError("stop must be a string or an array of strings");
  }
  return list;
}