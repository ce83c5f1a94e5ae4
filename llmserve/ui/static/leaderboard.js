// The leaderboard page: the ranking from /ui/api/leaderboard as a table.

import { ApiError, getJson } from "./api.js";
import { $, el, setupKeyPanel, showBanner } from "./common.js";

const showKeyPanel = setupKeyPanel(load);

function row(entry, rank) {
  const tr = el("tr");
  tr.dataset.model = entry.model;
  const cells = [rank, entry.model, entry.rating.toFixed(1), entry.num_battles, entry.num_wins, entry.num_losses,
    entry.num_ties];
  cells.forEach((value, i) => tr.append(el("td", i === 1 ? "model" : "num", String(value))));
  return tr;
}

async function load() {
  const summary = $("#board-summary");
  try {
    const board = await getJson("ui/api/leaderboard");
    showBanner("");
    $("#board tbody").replaceChildren(...board.data.map((entry, i) => row(entry, i + 1)));
    summary.textContent = board.num_votes
      ? `${board.num_votes} vote${board.num_votes === 1 ? "" : "s"} from anonymous battles.`
      : "No votes yet: battle in the arena to fill this table.";
  } catch (err) {
    summary.textContent = "";
    if (err instanceof ApiError && err.needsKey) showKeyPanel(err.message);
    else showBanner(err.message || String(err));
  }
}

$("#refresh").addEventListener("click", load);
load();
