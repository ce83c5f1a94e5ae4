// The arena: one prompt, two models streaming side by side, then a vote posted to /ui/api/vote.
//
// In a battle the server picks the two models (POST /ui/api/battle) and the page only ever holds
// their aliases, so nothing in the page or its requests names them until the vote's answer does.

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

// The current round: which model (or battle alias) plays which side, and how each answer went.
let round = null;
let isStarting = false; // a battle is being set up: one send at a time
const showKeyPanel = setupKeyPanel(refreshModels);

function showError(err) {
  if (err instanceof ApiError && err.needsKey) showKeyPanel(err.message);
  else showBanner(err.message || String(err));
}

/** Fill the model pickers; only the named mode needs them (a battle's models are the server's choice). */
async function refreshModels() {
  if (ui.mode.value !== "side") return;
  try {
    const models = await listModels();
    fillModelSelect(ui.left, models, ui.left.value || models[0]);
    fillModelSelect(ui.right, models, ui.right.value || models[1] || models[0]);
    showBanner(models.length ? "" : "No model is ready on this server right now.");
  } catch (err) {
    showError(err);
  }
}

/** A new round; a battle asks the server for one and plays its two aliases. Null when it cannot start. */
async function newRound(prompt) {
  const anonymous = ui.mode.value === "battle";
  const next = { prompt, anonymous, battleId: null, states: {}, controller: new AbortController(), voted: false };
  if (anonymous) {
    const battle = await postJson("ui/api/battle", {});
    next.battleId = battle.battle_id;
    next.models = { left: battle.left, right: battle.right };
  } else {
    next.models = { left: ui.left.value, right: ui.right.value };
    if (!next.models.left || !next.models.right) {
      showBanner("Pick a model for each side.");
      return null;
    }
  }
  return next;
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

/** Token counts and speed, shown only for named models: in a battle they would help tell the models apart. */
function stats(result) {
  return round.anonymous ? "" : formatStats(result);
}

async function answer(side) {
  const view = paneView(side);
  const request = {
    model: round.models[side], messages: [{ role: "user", content: round.prompt }],
    temperature: numberValue(ui.temperature),
    // A battle needs a bound (an answer run to the model's context would show its length): the field's default.
    max_tokens: numberValue(ui.maxTokens) ?? (round.anonymous ? Number(ui.maxTokens.defaultValue) : undefined),
  };
  let progress = null;
  let frame = 0;
  try {
    const result = await streamChat(request, {
      signal: round.controller.signal,
      usage: !round.anonymous,
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
    view.meta.textContent = stats(result) || "done";
  } catch (err) {
    cancelAnimationFrame(frame);
    round.states[side] = err.name === "AbortError" ? "stopped" : "error";
    if (progress) view.body.innerHTML = renderMarkdown(progress.text);
    const shown = progress ? stats(progress) : "";
    view.meta.textContent = round.states[side] === "stopped" ? ["stopped", shown].filter(Boolean).join(" · ") : "";
    if (round.states[side] === "error") {
      view.body.append(el("p", "msg-error", err.message || String(err)));
      if (err instanceof ApiError && err.needsKey) showKeyPanel(err.message);
    }
  }
  view.pane.dataset.state = round.states[side];
}

async function send() {
  const prompt = ui.prompt.value.trim();
  if (!prompt || isStarting || (round && round.controller)) return;
  isStarting = true;
  updateControls();
  let next = null;
  try {
    next = await newRound(prompt);
  } catch (err) {
    showError(err);
  }
  isStarting = false;
  updateControls();
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
  ui.send.disabled = busy || isStarting;
  ui.stop.hidden = !busy;
  for (const button of ui.votes) button.disabled = !canVote();
}

async function vote(winner) {
  if (!canVote()) return;
  for (const button of ui.votes) button.disabled = true;
  // A battle vote names only the battle: the server records the models it picked, and says which they were.
  const body = round.anonymous ? { battle_id: round.battleId, winner, prompt: round.prompt }
    : { left: round.models.left, right: round.models.right, winner, prompt: round.prompt };
  let recorded;
  try {
    recorded = await postJson("ui/api/vote", body);
  } catch (err) {
    // An expired or already voted battle takes no vote at all, nor one whose answers did not both
    // arrive in full (one was stopped): the server only counts what was delivered. Anything else may be retried.
    round.voted = err instanceof ApiError &&
      ["battle_not_found", "battle_already_voted", "battle_not_answered"].includes(err.code);
    showError(err);
    updateControls();
    return;
  }
  round.voted = true;
  for (const side of SIDES) {
    const view = paneView(side);
    view.name.textContent = recorded[side];
    view.pane.classList.toggle("won", winner === side);
  }
  ui.voteResult.textContent = `Vote recorded: ${WINNER_TEXT[winner]}. ` +
    `Model A was ${recorded.left}, model B was ${recorded.right}. Send another prompt for a new round.`;
  updateControls();
}

function showPicks() {
  for (const pick of ui.picks) pick.hidden = ui.mode.value !== "side";
  showBanner("");
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
