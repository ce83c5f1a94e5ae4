// DOM helpers the three pages share: the API-key panel, the error banner, copying, small builders.

import { getApiKey, setApiKey } from "./api.js";

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** A new element with a class and text (text is never parsed as HTML). */
export function el(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

/**
 * Wire the header's "API key" button and panel. `onSaved()` runs after a key is saved or forgotten.
 * Returns `show(message)`, which opens the panel, e.g. after a 401.
 */
export function setupKeyPanel(onSaved) {
  const panel = $("#key-panel");
  const input = $("#key-input");
  const message = $("#key-message");
  const show = (text = "") => {
    panel.hidden = false;
    message.textContent = text;
    input.value = getApiKey();
    input.focus();
  };
  $("#key-button").addEventListener("click", () => (panel.hidden ? show() : (panel.hidden = true)));
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    panel.hidden = true;
    onSaved();
  });
  $("#key-forget").addEventListener("click", () => {
    setApiKey("");
    input.value = "";
    message.textContent = "The key was removed from this browser.";
  });
  return show;
}

/** Show a readable error at the top of the page (empty text hides it). */
export function showBanner(text) {
  const banner = $("#banner");
  banner.textContent = text;
  banner.hidden = !text;
}

/** Copy text to the clipboard; falls back to a hidden textarea where the Clipboard API is missing. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = el("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

/** Briefly relabel a button ("Copied") after an action. */
export function flash(button, text) {
  const original = button.dataset.label || button.textContent;
  button.dataset.label = original;
  button.textContent = text;
  setTimeout(() => (button.textContent = original), 1500);
}

/** Copy buttons of rendered code blocks, inside `root`, by event delegation. */
export function wireCodeCopy(root) {
  root.addEventListener("click", (event) => {
    const button = event.target.closest("button.copy-code");
    if (!button) return;
    const code = button.closest(".code-block").querySelector("code");
    copyText(code.textContent).then(() => flash(button, "Copied"), () => flash(button, "Copy failed"));
  });
}

/** Read a number input; `undefined` when empty or invalid, so the server's default applies. */
export function numberValue(input) {
  const value = Number.parseFloat(input.value);
  return Number.isFinite(value) ? value : undefined;
}

/** Persist the values of some inputs under one localStorage key, restoring them now. */
export function persistInputs(storageKey, inputs) {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(storageKey) || "{}");
  } catch {
    saved = {};
  }
  for (const input of inputs) {
    if (typeof saved[input.id] === "string") input.value = saved[input.id];
    input.addEventListener("change", () => {
      const values = Object.fromEntries(inputs.map((i) => [i.id, i.value]));
      localStorage.setItem(storageKey, JSON.stringify(values));
    });
  }
}

/** Fill a <select> with model names, keeping `preferred` selected when it is still served. */
export function fillModelSelect(select, names, preferred) {
  select.replaceChildren(...names.map((name) => {
    const option = el("option", "", name);
    option.value = name;
    return option;
  }));
  if (names.length === 0) {
    const option = el("option", "", "no model is ready");
    option.value = "";
    select.append(option);
  }
  if (names.includes(preferred)) select.value = preferred;
  select.disabled = names.length === 0;
}
