// The leaderboard page: GET arena/leaderboard as a table, fetched again when a vote is cast
// in another page of this browser (until the board counts it) and every 15 s while the page
// is visible.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const rows = document.getElementById("rows");
  const summary = document.getElementById("summary");
  const refreshButton = document.getElementById("refresh");
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

  function show(r) {
    const board = r.leaderboard;
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
    const when = new Date().toLocaleTimeString();
    summary.textContent =
      r.battles === 0
        ? "No votes yet: vote in the Arena."
        : `${r.battles} vote${r.battles === 1 ? "" : "s"} · updated ${when}`;
    document.body.dataset.votes = String(r.battles);
  }

  let loading = false;
  async function refresh() {
    if (loading) return;
    loading = true;
    try {
      show(await Camelid.apiJson("arena/leaderboard"));
    } catch (e) {
      summary.textContent = "Cannot load the leaderboard: " + e.message;
    } finally {
      loading = false;
    }
  }

  // The server rates a vote within about 2 s of it (it refits in the background, not per
  // request): after one, ask again until the board counts it, for at most 6 s.
  async function afterVote() {
    const seen = Number(document.body.dataset.votes || 0);
    for (let i = 0; i < 12; i++) {
      await refresh();
      if (Number(document.body.dataset.votes || 0) > seen) return;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  refreshButton.addEventListener("click", refresh);
  if ("BroadcastChannel" in window) {
    new BroadcastChannel("camelid-arena").addEventListener("message", afterVote);
  }
  setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, POLL_MS);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refresh();
  });
  refresh();
});
