// The server's own API from the browser: the API key, JSON calls, SSE chat streams, readable errors.
//
// Every URL is relative to the page, so the UI also works behind a reverse proxy under a path prefix.

const KEY_STORAGE = "llmserve.apiKey";

export function getApiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** An error to show as is: `message` is written for a person. */
export class ApiError extends Error {
  constructor(message, { status = 0, type = "", code = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
  }

  get needsKey() {
    return this.status === 401;
  }

  get modelGone() {
    return this.code === "model_not_found";
  }
}

function requestHeaders(hasBody) {
  const headers = {};
  const key = getApiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (hasBody) headers["Content-Type"] = "application/json";
  return headers;
}

async function errorFrom(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not JSON: a proxy's error page, say; the status line is all there is
  }
  const message = error.message || `${response.status} ${response.statusText}`.trim();
  const status = response.status;
  let text = message;
  if (status === 401) {
    text = getApiKey() ? `The API key was refused (${message}). Enter a valid key.` : "This server needs an API key.";
  } else if (status === 404 && error.code === "model_not_found") {
    text = `${message}. The model list has been refreshed; pick another model.`;
  } else if (status === 503) {
    const retry = response.headers.get("Retry-After");
    text = `The server is busy or not ready: ${message}.${retry ? ` Try again in ${retry} s.` : ""}`;
  } else if (status >= 500) {
    text = `The server failed: ${message}`;
  }
  return new ApiError(text, { status, type: error.type || "", code: error.code || null });
}

/** fetch() with the API key; rejects with ApiError for HTTP errors and network failures. */
export async function apiFetch(path, { method = "GET", body, signal } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: requestHeaders(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Could not reach the server: it may be down or the connection dropped.", { type: "network" });
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function getJson(path) {
  return (await apiFetch(path)).json();
}

export async function postJson(path, body) {
  return (await apiFetch(path, { method: "POST", body })).json();
}

/** Names of the models the server serves now. */
export async function listModels() {
  return (await getJson("v1/models")).data.map((m) => m.id);
}

/**
 * Stream one chat completion. `onText(result)` gets the result so far (`result.text`) after every piece;
 * `usage` asks for the token counts (refused in a battle).
 * Resolves to {text, finishReason, usage, startedAt, firstAt, lastAt, numPieces}; rejects with
 * ApiError, or with the AbortError of `signal` (the server then aborts the request).
 */
export async function streamChat(request, { signal, onText = () => {}, usage = true } = {}) {
  const result = { text: "", finishReason: null, usage: null, startedAt: performance.now(), firstAt: null, lastAt: null, numPieces: 0 };
  // A battle answer carries no token counts (they would tell its model): `usage` false asks for none.
  const body = { ...request, stream: true, ...(usage ? { stream_options: { include_usage: true } } : {}) };
  const response = await apiFetch("v1/chat/completions", { method: "POST", body, signal });
  for await (const data of sseData(response.body, signal)) {
    if (data === "[DONE]") return result;
    const chunk = parseChunk(data);
    if (chunk.usage) result.usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) continue;
    const piece = choice.delta && choice.delta.content;
    if (piece) {
      result.lastAt = performance.now();
      if (result.firstAt === null) result.firstAt = result.lastAt;
      result.text += piece;
      result.numPieces += 1;
      onText(result);
    }
    if (choice.finish_reason) result.finishReason = choice.finish_reason;
  }
  throw new ApiError("The connection closed before the answer finished.", { type: "network" });
}

function parseChunk(data) {
  let chunk;
  try {
    chunk = JSON.parse(data);
  } catch {
    throw new ApiError("The server sent an event that is not JSON.", { type: "protocol" });
  }
  if (chunk.error) {
    const { message, type, code } = chunk.error;
    throw new ApiError(`The server failed while answering: ${message}`, { type, code });
  }
  return chunk;
}

/** The `data:` payloads of a server-sent-events body, one per event line. */
async function* sseData(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      let step;
      try {
        step = await reader.read();
      } catch (err) {
        if (signal && signal.aborted) throw signal.reason || err;
        throw new ApiError("The connection dropped in the middle of the answer.", { type: "network" });
      }
      if (step.done) return;
      buffer += decoder.decode(step.value, { stream: true });
      const lines = buffer.split(/\r?\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line.startsWith("data:")) yield line.slice(line.startsWith("data: ") ? 6 : 5);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** "12 tokens · TTFT 35 ms · 80.1 tok/s" for a finished (or stopped) stream. */
export function formatStats(result) {
  if (result.firstAt === null) return "no tokens";
  const exact = result.usage !== null;
  const numTokens = exact ? result.usage.completion_tokens : result.numPieces;
  const parts = [`${exact ? "" : "~"}${numTokens} tokens`, `TTFT ${Math.round(result.firstAt - result.startedAt)} ms`];
  const decodeS = (result.lastAt - result.firstAt) / 1000;
  if (numTokens > 1 && decodeS > 0) parts.push(`${((numTokens - 1) / decodeS).toFixed(1)} tok/s`);
  return parts.join(" · ");
}
