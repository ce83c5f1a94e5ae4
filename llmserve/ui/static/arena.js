// The arena: one prompt, two models streaming side by side, then a vote posted to /ui/api/vote.

import { ApiError, formatStats, listModels, postJson, streamChat } from "./api.js";
import { $, el, fillModelSelect, numberValue, persistInputs, setupKeyPanel, showBanner, wireCodeCopy } from "./common.js";
import { renderMarkdown } from "./markdown.js";

const SETTINGS_KEY = "llmserve.arena.settings";
const SIDES = ["left", "right"];
const WINNER_TEXT = { left: "A is better", right: "B is better", tie: "a tie", both_bad: "both are bad" };

const ui = {
  mode: $("#mode"),
  picks: document.querySelectorAll(".pick"),
  left: $("#model-left"),
  right: $("#model-right"),
  temperature: $("#arena-temperature"),
  maxTokens: $("#arena-max-tokens"),
  prompt: $("#arena-prompt"),
  send: $("#arena-send"),
  stop: $("#arena-stop"),
  votes: [...document.querySelectorAll("#votes button")],
  voteResult: $("#vote-result"),
  question: $("#arena-question"),
  panes: { left: $("#pane-left"), right: $("#pane-right") },
};

// The current round: which model plays which side, and how each answer went.
let round = null;
let models = [];
const showKeyPanel = setupKeyPanel(refreshModels);

function showError(err) {
  if (err instanceof ApiError && err.needsKey) showKeyPanel(err.message);
  else showBanner(err.message || String(err));
}

async function refreshModels() {
  try {
    models = await listModels();
    fillModelSelect(ui.left, models, ui.left.value || models[0]);
    fillModelSelect(ui.right, models, ui.right.value || models[1] || models[0]);
    showBanner(models.length >= 2 || ui.mode.value === "side" ? ""
      : `A battle needs two models; this server serves ${models.length} right now.`);
  } catch (err) {
    showError(err);
  }
}

function pickBattle() {
  const pool = [...models];
  for (let i = pool.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  return pool.slice(0, 2);
}

function newRound(prompt) {
  const anonymous = ui.mode.value === "battle";
  const [left, right] = anonymous ? pickBattle() : [ui.left.value, ui.right.value];
  if (!left || !right) {
    showBanner(anonymous ? "A battle needs two served models." : "Pick a model for each side.");
    return null;
  }
  return { prompt, anonymous, models: { left, right }, states: {}, controller: new AbortController(), voted: false };
}

function paneView(side) {
  const pane = ui.panes[side];
  return { pane, body: $(".pane-body", pane), meta: $(".pane-meta", pane), name: $(".pane-name", pane) };
}

function resetPane(side) {
  const view = paneView(side);
  view.pane.dataset.state = "streaming";
  view.pane.classList.remove("won");
  view.body.replaceChildren();
  view.meta.textContent = "generating...";
  view.name.textContent = round.anonymous ? "" : round.models[side];
}

async function answer(side) {
  const view = paneView(side);
  const request = {
    model: round.models[side], messages: [{ role: "user", content: round.prompt }],
    temperature: numberValue(ui.temperature), max_tokens: numberValue(ui.maxTokens),
  };
  let progress = null;
  let frame = 0;
  try {
    const result = await streamChat(request, {
      signal: round.controller.signal,
      onText: (partial) => {
        progress = partial;
        frame = frame || requestAnimationFrame(() => {
          frame = 0;
          view.body.innerHTML = renderMarkdown(progress.text);
        });
      },
    });
    round.states[side] = "done";
    view.body.innerHTML = renderMarkdown(result.text);
    view.meta.textContent = formatStats(result);
  } catch (err) {
    cancelAnimationFrame(frame);
    round.states[side] = err.name === "AbortError" ? "stopped" : "error";
    if (progress) view.body.innerHTML = renderMarkdown(progress.text);
    const stats = progress ? formatStats(progress) : "";
    view.meta.textContent = round.states[side] === "stopped" ? ["stopped", stats].filter(Boolean).join(" · ") : "";
    if (round.states[side] === "error") {
      view.body.append(el("p", "msg-error", err.message || String(err)));
      if (err instanceof ApiError && err.needsKey) showKeyPanel(err.message);
    }
  }
  view.pane.dataset.state = round.states[side];
}

async function send() {
  const prompt = ui.prompt.value.trim();
  if (!prompt || (round && round.controller)) return;
  const next = newRound(prompt);
  if (!next) return;
  round = next;
  ui.prompt.value = "";
  ui.question.textContent = prompt;
  ui.question.hidden = false;
  showBanner("");
  ui.voteResult.textContent = "";
  SIDES.forEach(resetPane);
  updateControls();
  await Promise.all(SIDES.map(answer));
  round.controller = null;
  updateControls();
}

function canVote() {
  return round !== null && round.controller === null && !round.voted && round.models.left !== round.models.right &&
    SIDES.every((side) => round.states[side] !== "error");
}

function updateControls() {
  const busy = round !== null && round.controller !== null;
  ui.send.disabled = busy;
  ui.stop.hidden = !busy;
  for (const button of ui.votes) button.disabled = !canVote();
}

async function vote(winner) {
  if (!canVote()) return;
  for (const button of ui.votes) button.disabled = true;
  const { left, right } = round.models;
  try {
    await postJson("ui/api/vote", { left, right, winner, prompt: round.prompt, anonymous: round.anonymous });
  } catch (err) {
    showError(err);
    updateControls();
    return;
  }
  round.voted = true;
  for (const side of SIDES) {
    const view = paneView(side);
    view.name.textContent = round.models[side];
    view.pane.classList.toggle("won", winner === side);
  }
  ui.voteResult.textContent = `Vote recorded: ${WINNER_TEXT[winner]}. Model A was ${left}, model B was ${right}. ` +
    "Send another prompt for a new round.";
  updateControls();
}

function showPicks() {
  for (const pick of ui.picks) pick.hidden = ui.mode.value !== "side";
  refreshModels();
}

$("#arena-composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", () => round && round.controller && round.controller.abort());
for (const button of ui.votes) button.addEventListener("click", () => vote(button.dataset.winner));
ui.mode.addEventListener("change", showPicks);
persistInputs(SETTINGS_KEY, [ui.temperature, ui.maxTokens]);
SIDES.forEach((side) => wireCodeCopy(ui.panes[side]));
refreshModels();
