// The arena page: one prompt, two anonymous answers side by side, a vote that reveals the
// names, follow-up turns in the same battle, and a new round.
"use strict";

// The arena's API calls, and only these: the page knows nothing else of the server.
//
// turn(battle, prompt, params, onAnswer): one turn answered by both models. `battle` is null
//   for a new battle, else what the previous turn resolved to (opaque to the page). `params`
//   is {temperature, max_tokens}. onAnswer(side, {text, done, finish}) is called as side "a"
//   or "b" grows: `text` is the whole answer so far, `done` true once that side is complete.
//   Resolves (after both sides are done) to the battle for the next turn or the vote.
// vote(battle, winner): winner is "model_a" | "model_b" | "tie" | "tie (bothbad)"; resolves
//   to {model_a, model_b}, the names.
//
// Today's server answers a turn whole: POST arena/battles {messages, battle_id?, ...params}
// → {battle_id, a: {content, finish_reason}, b: {...}}. Streaming both sides (and a battle
// token instead of the id) changes the bodies of these two functions only.
const ArenaApi = {
  async turn(battle, prompt, params, onAnswer) {
    // The current API takes one conversation for both models, so a follow-up carries
    // model A's earlier answers to both.
    const messages = [...(battle ? battle.history : []), { role: "user", content: prompt }];
    const body = { messages, ...params };
    if (battle) body.battle_id = battle.id;
    const r = await Camelid.apiJson("arena/battles", { method: "POST", body });
    for (const side of ["a", "b"]) {
      onAnswer(side, { text: r[side].content || "", done: true, finish: r[side].finish_reason });
    }
    return {
      id: r.battle_id,
      history: [...messages, { role: "assistant", content: r.a.content || "" }],
    };
  },

  async vote(battle, winner) {
    return Camelid.apiJson(`arena/battles/${encodeURIComponent(battle.id)}/vote`, {
      method: "POST",
      body: { winner },
    });
  },
};

document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const form = $("composer");
  const prompt = $("prompt");
  const sendButton = $("send");
  const newRoundButton = $("new-round");
  const status = $("status");
  const temperature = $("temperature");
  const maxTokens = $("max-tokens");
  const columns = { a: $("answers-a"), b: $("answers-b") };
  const names = { a: $("name-a"), b: $("name-b") };
  const voteButtons = {
    model_a: $("vote-a"),
    model_b: $("vote-b"),
    tie: $("vote-tie"),
    "tie (bothbad)": $("vote-bad"),
  };
  // Other pages of this browser (the leaderboard) hear of each vote.
  const votesChannel = "BroadcastChannel" in window ? new BroadcastChannel("camelid-arena") : null;

  let battle = null;
  // idle: no battle yet; waiting: a turn is being answered; answered: both sides complete,
  // a vote or a follow-up may come; voted: names shown, only a new round.
  let phase = "idle";

  function setPhase(p) {
    phase = p;
    const canVote = p === "answered";
    for (const b of Object.values(voteButtons)) b.disabled = !canVote;
    sendButton.disabled = p === "waiting" || p === "voted";
    prompt.disabled = p === "waiting" || p === "voted";
    newRoundButton.disabled = p === "waiting" || battle === null;
    document.body.dataset.phase = p;
    for (const c of Object.values(columns)) c.setAttribute("aria-busy", String(p === "waiting"));
  }

  function say(text) {
    status.textContent = text;
  }

  function addMessage(side, role, text) {
    const el = document.createElement("article");
    el.className = `message ${role}`;
    const body = document.createElement("div");
    body.className = "body";
    if (role === "user") body.textContent = text;
    const note = document.createElement("p");
    note.className = "note";
    el.append(body, note);
    columns[side].append(el);
    return el;
  }

  function params() {
    return {
      temperature: Camelid.numberField(temperature, 0.7),
      max_tokens: Math.round(Camelid.numberField(maxTokens, 512)),
    };
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || (phase !== "idle" && phase !== "answered")) return;
    document.querySelectorAll(".arena .failed").forEach((el) => el.remove());
    const answers = {};
    for (const side of ["a", "b"]) {
      addMessage(side, "user", text).classList.add("turn");
      answers[side] = addMessage(side, "assistant", "");
      answers[side].dataset.state = "streaming";
      answers[side].querySelector(".note").textContent = "Answering…";
    }
    const before = phase;
    prompt.value = "";
    say("");
    setPhase("waiting");
    try {
      battle = await ArenaApi.turn(battle, text, params(), (side, answer) => {
        const el = answers[side];
        Camelid.renderMarkdown(el.querySelector(".body"), answer.text);
        if (answer.done) {
          el.dataset.state = "done";
          el.querySelector(".note").textContent =
            answer.finish === "length" ? "Cut at the max tokens setting." : "";
        }
      });
      setPhase("answered");
      say("Both answers are in: vote, or ask a follow-up.");
    } catch (err) {
      for (const side of ["a", "b"]) {
        const el = answers[side];
        el.dataset.state = "error";
        el.querySelector(".note").textContent = "Error: " + err.message;
        el.classList.add("failed");
        el.previousElementSibling.classList.add("failed");
      }
      setPhase(before);
      say("Error: " + err.message);
    }
  });
  Camelid.enterSubmits(prompt, form);

  for (const [winner, button] of Object.entries(voteButtons)) {
    button.addEventListener("click", async () => {
      if (phase !== "answered") return;
      setPhase("voted");
      try {
        const r = await ArenaApi.vote(battle, winner);
        names.a.textContent = "Model A: " + r.model_a;
        names.b.textContent = "Model B: " + r.model_b;
        names.a.parentElement.classList.toggle("winner", winner === "model_a");
        names.b.parentElement.classList.toggle("winner", winner === "model_b");
        button.classList.add("chosen");
        say("Thanks for voting. Start a new round for another battle.");
        if (votesChannel) votesChannel.postMessage("vote");
        newRoundButton.focus();
      } catch (err) {
        setPhase("answered");
        say("The vote failed: " + err.message);
      }
    });
  }

  newRoundButton.addEventListener("click", () => {
    if (phase === "waiting") return;
    battle = null;
    for (const side of ["a", "b"]) {
      columns[side].replaceChildren();
      names[side].textContent = side === "a" ? "Model A" : "Model B";
      names[side].parentElement.classList.remove("winner");
    }
    for (const b of Object.values(voteButtons)) b.classList.remove("chosen");
    say("");
    setPhase("idle");
    prompt.focus();
  });

  setPhase("idle");
  document.body.dataset.ready = "true";
});
