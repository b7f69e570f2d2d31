// The arena page: one prompt, two anonymous answers side by side, a vote that reveals the
// names, follow-up turns in the same battle, and a new round.
"use strict";

// The arena's API calls, and only these: the page knows nothing else of the server.
//
// turn(battle, prompt, params, onAnswer): one turn answered by both models. `battle` is null
//   for a new battle, else what the previous turn resolved to (opaque to the page). `params`
//   is {temperature, max_tokens}. onAnswer(side, {text, done, finish}) is called as side "a"
//   or "b" grows: `text` is the whole answer so far, `done` true once that side is complete.
//   Resolves (after both sides are done and the turn is stored) to the battle for the next
//   turn or the vote: {id, token, revision} (the revision names the answers it holds).
// regenerate(battle, params, onAnswer): the battle's last turn answered again (the same
//   prompt), as turn() answers; the new answers replace the old ones once both are stored.
// config(): the arena's limits, {min_temperature, max_tokens, max_turns, max_input_chars}:
//   the least temperature and the most output tokens a turn may ask, the turns a battle
//   takes and the characters of a prompt (null from a private arena, which wants a key).
// vote(battle, winner): winner is "model_a" | "model_b" | "tie" | "tie (bothbad)"; resolves
//   to {model_a, model_b}, the names. Cast on the answers the page shows (the battle's
//   revision, sent with follow-ups and regenerates too): if the server holds others (a turn
//   stored after its reply was lost), 409 battle_changed.
//
// The server keeps each side's conversation: a follow-up sends only the new prompt, with the
// battle's id and the visitor's token (the battle is the visitor's; the token is kept for
// this browser tab's later battles too).
const ArenaApi = {
  TOKEN_STORE: "camelid.arenaToken",

  token() {
    try {
      return sessionStorage.getItem(this.TOKEN_STORE) || null;
    } catch {
      return this.memoryToken || null;
    }
  },

  keepToken(token) {
    this.memoryToken = token;
    try {
      sessionStorage.setItem(this.TOKEN_STORE, token);
    } catch {
      // Storage off: the token lasts as long as the page.
    }
  },

  // {min_temperature, max_tokens, max_turns, max_input_chars}: what a turn may ask; null
  // where the server does not say
  // without a key (a private arena: the key is asked for at the first turn, not on load).
  // A private arena's wants the key: sent where the browser holds one, never asked for.
  async config() {
    const key = Camelid.currentKey();
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const resp = await fetch("arena/config", { headers });
    return resp.ok ? resp.json() : null;
  },

  // `signal` stops the turn: the server cancels both sides and keeps nothing of it.
  async turn(battle, prompt, params, onAnswer, signal) {
    const body = { messages: [{ role: "user", content: prompt }], stream: true, ...params };
    const token = battle ? battle.token : this.token();
    if (token) body.token = token;
    if (battle) {
      body.battle_id = battle.id;
      // A follow-up builds on the answers shown: if the server holds others, 409.
      if (battle.revision) body.revision = battle.revision;
    }
    return this.answers("arena/battles", body, onAnswer, signal);
  },

  // The battle's last turn answered again by both models; resolves as turn() does once the
  // new answers have replaced the old (stopped or failed, the old ones stand).
  async regenerate(battle, params, onAnswer, signal) {
    const body = { token: battle.token, stream: true, ...params };
    if (battle.revision) body.revision = battle.revision;
    const path = `arena/battles/${encodeURIComponent(battle.id)}/regenerate`;
    return this.answers(path, body, onAnswer, signal);
  },

  // Both sides' answers streamed from `path`: the battle, then each side's pieces, then the
  // turn stored.
  async answers(path, body, onAnswer, signal) {
    const resp = await this.whileAnswering(async () => {
      const r = await Camelid.api(path, { method: "POST", body, signal });
      if (!r.ok) throw await Camelid.apiError(r);
      return r;
    });
    const text = { a: "", b: "" };
    let next = null;
    let stored = false;
    for await (const ev of Camelid.sseData(resp)) {
      if (ev.battle_id) {
        next = { id: ev.battle_id, token: ev.token };
        this.keepToken(ev.token);
      } else if (ev.side === "a" || ev.side === "b") {
        if (typeof ev.delta === "string") {
          text[ev.side] += ev.delta;
          onAnswer(ev.side, { text: text[ev.side], done: false });
        } else if (ev.finish_reason) {
          onAnswer(ev.side, { text: text[ev.side], done: true, finish: ev.finish_reason });
        }
      } else if (ev.done) {
        stored = true;
        if (next) next.revision = ev.revision;
      }
    }
    if (!next || !stored) throw new Error("The answers ended early; ask again.");
    return next;
  },

  async vote(battle, winner) {
    return this.whileAnswering(() =>
      Camelid.apiJson(`arena/battles/${encodeURIComponent(battle.id)}/vote`, {
        method: "POST",
        body: { winner, token: battle.token, revision: battle.revision },
      }),
    );
  },

  // A turn just stopped holds its battle until its server notices (at its next piece): a
  // follow-up or vote sent at once is refused for that (409 battle_answering, not counted
  // against the visitor's limits) and asked again for up to 5 s rather than failing.
  async whileAnswering(call) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await call();
      } catch (err) {
        if (err.code !== "battle_answering" || attempt === 20) throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  },
};

// The battle this tab is in, until its vote: its id and token and the turns both sides
// answered, so a reload (or a tab restored) shows the battle again and its vote is not lost.
// Only whole turns are kept: a failed or stopped one is not part of the battle.
const SavedBattle = {
  STORE: "camelid.arenaBattle",

  load() {
    try {
      const s = JSON.parse(sessionStorage.getItem(this.STORE));
      return s && s.battle && Array.isArray(s.turns) && s.turns.length ? s : null;
    } catch {
      return null;
    }
  },

  save(battle, turns) {
    try {
      sessionStorage.setItem(this.STORE, JSON.stringify({ battle, turns }));
    } catch {
      // Storage off or full: a reload loses the battle, as it did before.
    }
  },

  clear() {
    try {
      sessionStorage.removeItem(this.STORE);
    } catch {
      // Nothing was kept.
    }
  },
};

document.addEventListener("DOMContentLoaded", async () => {
  const $ = (id) => document.getElementById(id);
  const form = $("composer");
  const prompt = $("prompt");
  const sendButton = $("send");
  const newRoundButton = $("new-round");
  const stopButton = $("stop");
  const regenerateButton = $("regenerate");
  // The turn being answered, to stop it.
  let controller = null;
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
  // The battle's whole turns: {prompt, a: {text, finish}, b: {text, finish}}.
  let turns = [];
  // idle: no battle yet; waiting: a turn is being answered; answered: both sides complete,
  // a vote or a follow-up may come; voting: the vote sent, its reply awaited (no new round:
  // the reply belongs to this battle); voted: names shown, only a new round; over: the server
  // takes no more of this battle (expired, or already voted), only a new round.
  let phase = "idle";
  // Replies that end the battle for this page, whatever it was about to do.
  const BATTLE_OVER = [
    "battle_expired",
    "battle_voted",
    "battle_not_found",
    "battle_not_yours",
    "battle_changed",
  ];

  function setPhase(p) {
    // A focused control about to be disabled would drop focus to the page.
    const focused = document.activeElement;
    phase = p;
    const canVote = p === "answered";
    // A battle at its turn limit takes no follow-up (the server would refuse it).
    const full = p === "answered" && maxTurns !== null && turns.length >= maxTurns;
    const closed = p === "waiting" || p === "voting" || p === "voted" || p === "over" || full;
    for (const b of Object.values(voteButtons)) b.disabled = !canVote;
    sendButton.disabled = closed;
    prompt.disabled = closed;
    newRoundButton.disabled = p === "waiting" || p === "voting" || battle === null;
    stopButton.disabled = p !== "waiting";
    regenerateButton.disabled = p !== "answered" || turns.length === 0;
    document.body.dataset.phase = p;
    for (const c of Object.values(columns)) c.setAttribute("aria-busy", String(p === "waiting"));
    if (focused && focused.disabled) {
      if (!stopButton.disabled) stopButton.focus();
      else if (!prompt.disabled) prompt.focus();
      else if (!newRoundButton.disabled) newRoundButton.focus();
    }
  }

  function finishNote(finish) {
    return finish === "length" ? "Cut at the max tokens setting." : "";
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

  // Max tokens left empty is the server's arena limit (--arena-max-tokens): a number the
  // page chose could be above it, and every turn would fail.
  function params() {
    const p = { temperature: Camelid.numberField(temperature, 0.7) };
    const max = Camelid.numberField(maxTokens, null);
    if (max !== null) p.max_tokens = Math.round(max);
    return p;
  }

  // The characters a turn may carry (the server's --arena-max-input-chars), once read.
  let maxChars = null;
  // Turns a battle takes (`max_turns`): past them only a vote, a regenerate or a new round.
  let maxTurns = null;
  let limitsRead = false;

  // The arena's limits bound the settings (`numberField` keeps a value within min and max),
  // so no turn asks what the server refuses. Without them the page's own stand (the
  // server's defaults); a private arena's are read again once a turn went through with a
  // key.
  async function readLimits() {
    try {
      const limits = await ArenaApi.config();
      if (!limits) return;
      limitsRead = true;
      temperature.min = String(limits.min_temperature);
      if (Number(temperature.value) < limits.min_temperature) {
        temperature.value = String(limits.min_temperature);
      }
      maxTokens.max = String(limits.max_tokens);
      if (limits.max_tokens_floor) maxTokens.min = String(limits.max_tokens_floor);
      maxTokens.placeholder = `up to ${limits.max_tokens}`;
      // Checked when sent, not by `maxlength`: a browser cuts a longer paste without a word.
      if (limits.max_input_chars) maxChars = limits.max_input_chars;
      if (limits.max_turns) maxTurns = limits.max_turns;
    } catch (e) {
      console.warn("arena limits:", e);
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || (phase !== "idle" && phase !== "answered")) return;
    // Counted as the server counts (code points); the prompt stays for the visitor to cut.
    const chars = [...text].length;
    if (maxChars !== null && chars > maxChars) {
      say(`This arena takes prompts of at most ${maxChars} characters; this one has ${chars}.`);
      return;
    }
    answerTurn(text, false);
  });

  // Regenerate: the last turn's prompt answered again by both models. Its answers are hidden
  // while the new ones stream, and come back if those are stopped or fail (the vote then
  // counts them, as the server kept them).
  regenerateButton.addEventListener("click", () => {
    if (phase !== "answered" || turns.length === 0) return;
    answerTurn(turns[turns.length - 1].prompt, true);
  });

  // One turn answered by both sides: a new prompt (`redo` false) or the last one again.
  async function answerTurn(text, redo) {
    document.querySelectorAll(".arena .failed").forEach((el) => el.remove());
    const answers = {};
    const replaced = {};
    for (const side of ["a", "b"]) {
      if (redo) {
        replaced[side] = [...columns[side].querySelectorAll(".message.assistant")].pop();
        replaced[side].hidden = true;
      } else {
        addMessage(side, "user", text).classList.add("turn");
      }
      answers[side] = addMessage(side, "assistant", "");
      answers[side].dataset.state = "streaming";
      answers[side].querySelector(".note").textContent = "Answering…";
    }
    const before = phase;
    if (!redo) prompt.value = "";
    say("");
    setPhase("waiting");
    // A side's text is drawn at most once a frame (Markdown and sanitising the whole
    // answer per piece would be quadratic over a long answer), and at once when it ends.
    const latest = { a: "", b: "" };
    const frames = { a: 0, b: 0 };
    const draw = (side) => {
      frames[side] = 0;
      Camelid.renderMarkdown(answers[side].querySelector(".body"), latest[side]);
    };
    const turn = { prompt: text, a: null, b: null };
    const onAnswer = (side, answer) => {
      const el = answers[side];
      latest[side] = answer.text;
      if (answer.done) turn[side] = { text: answer.text, finish: answer.finish };
      if (answer.done) {
        if (frames[side]) cancelAnimationFrame(frames[side]);
        draw(side);
      } else if (!frames[side]) {
        frames[side] = requestAnimationFrame(() => draw(side));
      }
      if (answer.done) {
        el.dataset.state = "done";
        el.querySelector(".note").textContent = finishNote(answer.finish);
      }
      // Both complete, the server stores the turn: a Stop now would not stop that.
      if (turn.a && turn.b) stopButton.disabled = true;
    };
    controller = new AbortController();
    try {
      battle = redo
        ? await ArenaApi.regenerate(battle, params(), onAnswer, controller.signal)
        : await ArenaApi.turn(battle, text, params(), onAnswer, controller.signal);
      if (redo) {
        for (const side of ["a", "b"]) replaced[side].remove();
        turns[turns.length - 1] = turn;
      } else {
        turns.push(turn);
      }
      SavedBattle.save(battle, turns);
      setPhase("answered");
      if (!limitsRead) readLimits();
      say(
        prompt.disabled
          ? `This battle is at its limit of ${maxTurns} turn${maxTurns === 1 ? "" : "s"}: ` +
            "vote, regenerate, or start a new round."
          : redo
            ? "New answers are in: vote, regenerate, or ask a follow-up."
            : "Both answers are in: vote, or ask a follow-up.",
      );
      // The prompt was disabled while waiting (focus fell to the page): give it back.
      if (!prompt.disabled) prompt.focus();
    } catch (err) {
      const stopped = err.name === "AbortError";
      const why = stopped ? "Stopped." : "Error: " + err.message;
      for (const side of ["a", "b"]) {
        if (frames[side]) cancelAnimationFrame(frames[side]);
        const el = answers[side];
        if (redo) {
          el.remove();
          replaced[side].hidden = false;
          continue;
        }
        el.dataset.state = stopped ? "stopped" : "error";
        el.querySelector(".note").textContent = why;
        el.classList.add("failed");
        el.previousElementSibling.classList.add("failed");
      }
      // The prompt comes back to be sent again (or edited), unless another was typed.
      if (!redo && !prompt.value) prompt.value = text;
      if (BATTLE_OVER.includes(err.code)) {
        SavedBattle.clear();
        setPhase("over");
        say(why + " Start a new round.");
        newRoundButton.focus();
      } else {
        setPhase(before);
        // A failed or stopped turn is not stored: a vote counts the turns above it.
        say(
          why +
            (redo ? " The earlier answers stand; a vote now counts them." : "") +
            (!redo && before === "answered" ? " A vote now counts the answers before this turn." : "") +
            (stopped && before === "idle" ? " Ask again to start a battle." : ""),
        );
        prompt.focus();
      }
    } finally {
      controller = null;
    }
  }
  Camelid.enterSubmits(prompt, form);
  stopButton.addEventListener("click", () => controller && controller.abort());

  for (const [winner, button] of Object.entries(voteButtons)) {
    button.addEventListener("click", async () => {
      if (phase !== "answered") return;
      setPhase("voting");
      try {
        const r = await ArenaApi.vote(battle, winner);
        showVote(r, "Thanks for voting.");
      } catch (err) {
        const first = err.code === "battle_voted" && err.body && err.body.vote;
        if (first && first.battle_id === battle.id) {
          // This battle's vote was cast before (its reply lost, or the page reloaded): that
          // one counts, and its names are shown.
          showVote(first, "Your earlier vote on this battle counts.");
        } else if (BATTLE_OVER.includes(err.code)) {
          // Expired, or gone: nothing more to show of it.
          SavedBattle.clear();
          setPhase("over");
          say("The vote failed: " + err.message + " Start a new round.");
          newRoundButton.focus();
        } else {
          setPhase("answered");
          say(
            "The vote failed: " +
              err.message +
              (err.status ? "" : " It may have been counted: vote again (a vote counted already is shown, not replaced)."),
          );
          button.focus();
        }
      }
    });
  }

  // The names after vote `r` (the server's answer), the winner marked.
  function showVote(r, thanks) {
    SavedBattle.clear();
    setPhase("voted");
    names.a.textContent = "Model A: " + r.model_a;
    names.b.textContent = "Model B: " + r.model_b;
    names.a.parentElement.classList.toggle("winner", r.winner === "model_a");
    names.b.parentElement.classList.toggle("winner", r.winner === "model_b");
    const chosen = voteButtons[r.winner];
    if (chosen) {
      chosen.classList.add("chosen");
      // Said, not only drawn: a screen reader hears which vote counts.
      chosen.setAttribute("aria-pressed", "true");
      thanks += ` Your vote: ${chosen.textContent.trim()}.`;
    }
    // A conversation that named a model is kept but not rated (FastChat's rule).
    say(
      r.anony === false
        ? thanks +
            " The vote is recorded but not rated: the conversation named a model. Start a new " +
            "round for another battle."
        : thanks + " Start a new round for another battle.",
    );
    newRoundButton.focus();
    if (votesChannel) votesChannel.postMessage("vote");
  }

  newRoundButton.addEventListener("click", () => {
    if (phase === "waiting") return;
    battle = null;
    turns = [];
    SavedBattle.clear();
    for (const side of ["a", "b"]) {
      columns[side].replaceChildren();
      names[side].textContent = side === "a" ? "Model A" : "Model B";
      names[side].parentElement.classList.remove("winner");
    }
    for (const b of Object.values(voteButtons)) {
      b.classList.remove("chosen");
      b.removeAttribute("aria-pressed");
    }
    say("");
    setPhase("idle");
    prompt.focus();
  });

  // A battle this tab had not voted on yet comes back as it was left.
  const saved = SavedBattle.load();
  if (saved) {
    battle = saved.battle;
    turns = saved.turns;
    for (const t of turns) {
      for (const side of ["a", "b"]) {
        addMessage(side, "user", t.prompt).classList.add("turn");
        const el = addMessage(side, "assistant", "");
        const answer = t[side] || { text: "" };
        Camelid.renderMarkdown(el.querySelector(".body"), answer.text);
        el.dataset.state = "done";
        el.querySelector(".note").textContent = finishNote(answer.finish);
      }
    }
    setPhase("answered");
    say("Your battle is back: vote, or ask a follow-up.");
  } else {
    setPhase("idle");
  }
  await readLimits();
  document.body.dataset.ready = "true";
});
