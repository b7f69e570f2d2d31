// The leaderboard page: GET arena/leaderboard as a table, fetched again when a vote is cast
// in another page of this browser (until the board counts it) and every 15 s while the page
// is visible. The style-control toggle shows the style-controlled fit the same reply carries.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const rows = document.getElementById("rows");
  const summary = document.getElementById("summary");
  const refreshButton = document.getElementById("refresh");
  const styleToggle = document.getElementById("style-control");
  const styleNote = document.getElementById("style-note");
  let last = null;
  const POLL_MS = 15000;

  // One plus the models whose whole interval lies above this model's (FastChat's rank).
  function rank(board, m) {
    return 1 + board.filter((o) => o.ci_low > m.ci_high).length;
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  // The style coefficients as a sentence: log-odds per standard deviation of each element.
  function coefficients(c) {
    if (!c) return "No answers to weigh yet.";
    const parts = Object.entries(c).map(([k, v]) => `${k} ${v >= 0 ? "+" : ""}${v.toFixed(2)}`);
    return "Style coefficients (log-odds per standard deviation): " + parts.join(", ") + ".";
  }

  function show(r) {
    last = r;
    const styled = styleToggle.checked;
    const view = styled ? r.style_control : r;
    const board = view.leaderboard;
    rows.replaceChildren(
      ...board.map((m) => {
        const tr = document.createElement("tr");
        tr.append(
          cell(String(rank(board, m)), "num"),
          cell(m.model, "model"),
          cell(m.rating.toFixed(0), "num"),
          cell(`${m.ci_low.toFixed(0)} – ${m.ci_high.toFixed(0)}`, "num"),
          cell(String(m.battles), "num"),
        );
        return tr;
      }),
    );
    // When the server fitted the board (not when this page asked): the summary, a live
    // region, changes, and is read out, only when the board does.
    const when =
      typeof r.computed_at === "number"
        ? ` · fitted ${new Date(r.computed_at * 1000).toLocaleTimeString()}`
        : "";
    // Votes on conversations that named a model are counted but not rated.
    const unrated = (r.votes ?? r.battles) - r.battles;
    const text =
      r.battles === 0 && unrated === 0
        ? "No votes yet: vote in the Arena."
        : `${r.battles} vote${r.battles === 1 ? "" : "s"} rated` +
          (unrated > 0 ? ` (${unrated} more not rated: the conversation named a model)` : "") +
          when;
    if (summary.textContent !== text) summary.textContent = text;
    document.body.dataset.votes = String(r.battles);
    document.body.dataset.view = styled ? "style" : "plain";
    styleNote.hidden = !styled;
    styleNote.textContent = styled
      ? `${view.battles} vote${view.battles === 1 ? "" : "s"} with both answers rated. ` +
        coefficients(view.coefficients)
      : "";
  }

  let loading = false;
  // The visitor closed the key dialog: the automatic refreshes stop asking (a dialog every
  // poll would take the page from them); the Refresh button asks again.
  let declined = false;
  async function refresh() {
    if (loading) return;
    loading = true;
    try {
      show(await Camelid.apiJson("arena/leaderboard"));
      declined = false;
    } catch (e) {
      if (e.name === "KeyDeclined") declined = true;
      summary.textContent = "Cannot load the leaderboard: " + e.message;
    } finally {
      loading = false;
    }
  }
  const autoRefresh = () => {
    if (document.visibilityState === "visible" && !declined) refresh();
  };

  // The server rates a vote within about 2 s of it (it refits in the background, not per
  // request): after one, ask again until the board counts it, for at most 6 s.
  async function afterVote() {
    // A visitor who closed the key dialog is not asked again by another tab's vote.
    if (declined) return;
    const seen = Number(document.body.dataset.votes || 0);
    for (let i = 0; i < 12; i++) {
      await refresh();
      if (declined || Number(document.body.dataset.votes || 0) > seen) return;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  refreshButton.addEventListener("click", refresh);
  styleToggle.addEventListener("change", () => {
    if (last) show(last);
  });
  if ("BroadcastChannel" in window) {
    new BroadcastChannel("camelid-arena").addEventListener("message", afterVote);
  }
  setInterval(autoRefresh, POLL_MS);
  document.addEventListener("visibilitychange", autoRefresh);
  refresh();
});
