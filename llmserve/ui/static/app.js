// The chat page: one conversation kept in localStorage, answers streamed from /v1/chat/completions.

import { ApiError, formatStats, listModels, streamChat } from "./api.js";
import {
  $, copyText, el, fillModelSelect, flash, numberValue, persistInputs, setupKeyPanel, showBanner, wireCodeCopy,
} from "./common.js";
import { renderMarkdown } from "./markdown.js";

const CONVERSATION_KEY = "llmserve.chat.conversation";
const SETTINGS_KEY = "llmserve.chat.settings";
const MODEL_KEY = "llmserve.chat.model";

const ui = {
  messages: $("#messages"),
  empty: $("#empty"),
  model: $("#model"),
  system: $("#system"),
  temperature: $("#temperature"),
  topP: $("#top-p"),
  maxTokens: $("#max-tokens"),
  prompt: $("#prompt"),
  send: $("#send"),
  stop: $("#stop"),
  regenerate: $("#regenerate"),
};

// Messages: {role: "user" | "assistant", content, model?, state?: "streaming" | "done" | "stopped" | "error",
// stats?, error?}. The page owns this one array; every change is saved and re-rendered.
const chat = { messages: loadConversation(), controller: null, pendingFrame: 0 };
const showKeyPanel = setupKeyPanel(refreshModels);

function loadConversation() {
  try {
    const messages = JSON.parse(localStorage.getItem(CONVERSATION_KEY) || "[]");
    if (!Array.isArray(messages)) return [];
    for (const m of messages) if (m.state === "streaming") m.state = "stopped"; // the page closed mid-answer
    return messages;
  } catch {
    return [];
  }
}

function saveConversation() {
  localStorage.setItem(CONVERSATION_KEY, JSON.stringify(chat.messages));
}

function showError(err) {
  if (err instanceof ApiError && err.needsKey) showKeyPanel(err.message);
  else showBanner(err.message || String(err));
}

async function refreshModels() {
  try {
    const names = await listModels();
    fillModelSelect(ui.model, names, localStorage.getItem(MODEL_KEY) || ui.model.value);
    showBanner(names.length ? "" : "No model is ready yet: the server is still loading. Reload in a moment.");
  } catch (err) {
    fillModelSelect(ui.model, [], "");
    showError(err);
  }
}

// ---- rendering -----------------------------------------------------------------------------

function render() {
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = chat.messages.length > 0;
  chat.messages.forEach((message, index) => ui.messages.append(messageView(message, index)));
  updateControls();
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function messageView(message, index) {
  const view = el("article", `msg msg-${message.role}`);
  view.dataset.index = String(index);
  view.dataset.role = message.role;
  view.dataset.state = message.state || "done";
  const who = message.role === "user" ? "You" : message.model || "Assistant";
  view.append(el("div", "msg-role", who));
  const body = el("div", "msg-body markdown");
  body.innerHTML = renderMarkdown(message.content);
  view.append(body);
  if (message.error) view.append(el("p", "msg-error", message.error));
  const foot = el("div", "msg-foot");
  foot.append(el("span", "msg-meta", metaText(message)));
  if (message.state !== "streaming" && message.content) {
    const copy = el("button", "link copy-message", "Copy");
    copy.type = "button";
    copy.addEventListener("click", () =>
      copyText(message.content).then(() => flash(copy, "Copied"), () => flash(copy, "Copy failed")));
    foot.append(copy);
  }
  view.append(foot);
  return view;
}

function metaText(message) {
  if (message.role !== "assistant") return "";
  if (message.state === "streaming") return "generating...";
  const stopped = message.state === "stopped" ? "stopped" : "";
  return [stopped, message.stats || ""].filter(Boolean).join(" · ");
}

/** Redraw only the streaming answer's text, at most once per frame. */
function scheduleStreamingRender(index) {
  if (chat.pendingFrame) return;
  chat.pendingFrame = requestAnimationFrame(() => {
    chat.pendingFrame = 0;
    const view = ui.messages.querySelector(`article[data-index="${index}"] .msg-body`);
    if (!view) return;
    const nearBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
    view.innerHTML = renderMarkdown(chat.messages[index].content);
    if (nearBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
  });
}

function updateControls() {
  const busy = chat.controller !== null;
  ui.stop.hidden = !busy;
  ui.send.disabled = busy;
  const last = chat.messages[chat.messages.length - 1];
  ui.regenerate.disabled = busy || !last;
}

// ---- actions -------------------------------------------------------------------------------

function requestMessages(upto) {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of chat.messages.slice(0, upto)) {
    if (m.content) messages.push({ role: m.role, content: m.content });
  }
  return messages;
}

async function answer() {
  const model = ui.model.value;
  if (!model) {
    showBanner("No model is selected: the server serves none right now.");
    return;
  }
  showBanner("");
  const index = chat.messages.push({ role: "assistant", content: "", model, state: "streaming" }) - 1;
  const message = chat.messages[index];
  const request = {
    model, messages: requestMessages(index),
    temperature: numberValue(ui.temperature), top_p: numberValue(ui.topP), max_tokens: numberValue(ui.maxTokens),
  };
  chat.controller = new AbortController();
  render();
  let progress = null;
  try {
    const result = await streamChat(request, {
      signal: chat.controller.signal,
      onText: (partial) => {
        progress = partial;
        message.content = partial.text;
        scheduleStreamingRender(index);
      },
    });
    message.content = result.text;
    message.state = "done";
    message.stats = formatStats(result) + (result.finishReason === "length" ? " · hit max tokens" : "");
  } catch (err) {
    message.state = err.name === "AbortError" ? "stopped" : "error";
    if (progress) message.stats = formatStats(progress);
    if (message.state === "error") {
      message.error = err.message || String(err);
      if (err instanceof ApiError && err.needsKey) showKeyPanel(err.message);
      if (err instanceof ApiError && err.modelGone) refreshModels();
    }
  } finally {
    chat.controller = null;
    saveConversation();
    render();
  }
}

function send() {
  const text = ui.prompt.value.trim();
  if (!text || chat.controller) return;
  chat.messages.push({ role: "user", content: text });
  ui.prompt.value = "";
  saveConversation();
  answer();
}

function regenerate() {
  if (chat.controller) return;
  if (chat.messages.length && chat.messages[chat.messages.length - 1].role === "assistant") chat.messages.pop();
  if (!chat.messages.length) return;
  answer();
}

function clear() {
  if (chat.controller) chat.controller.abort();
  chat.messages = [];
  saveConversation();
  render();
}

// ---- wiring --------------------------------------------------------------------------------

$("#composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", () => chat.controller && chat.controller.abort());
ui.regenerate.addEventListener("click", regenerate);
$("#clear").addEventListener("click", clear);
ui.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, ui.model.value));
persistInputs(SETTINGS_KEY, [ui.system, ui.temperature, ui.topP, ui.maxTokens]);
wireCodeCopy(ui.messages);
if (window.matchMedia("(max-width: 720px)").matches) $("#settings").open = false;

render();
refreshModels();
