// The chat page: a multi-turn conversation with one model over /v1/chat/completions,
// answers streamed (stream: true, read by Camelid.sseData), with stop, regenerate and clear.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const modelSelect = $("model");
  const temperature = $("temperature");
  const maxTokens = $("max-tokens");
  const list = $("messages");
  const status = $("status");
  const form = $("composer");
  const prompt = $("prompt");
  const sendButton = $("send");
  const stopButton = $("stop");
  const regenerateButton = $("regenerate");
  const clearButton = $("clear");
  const MODEL_STORE = "camelid.chatModel";

  // The conversation as the API sees it; each entry also keeps its element on the page.
  let messages = [];
  let controller = null;

  function setBusy(busy) {
    // A focused button about to be disabled would drop focus to the page: it moves to Stop
    // while answering, to the prompt after.
    const focused = document.activeElement;
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
    regenerateButton.disabled = busy || messages.length === 0;
    list.setAttribute("aria-busy", String(busy));
    if (focused && focused.disabled) (busy ? stopButton : prompt).focus();
  }

  function say(text) {
    status.textContent = text;
  }

  function bubble(role) {
    const el = document.createElement("article");
    el.className = `message ${role}`;
    const who = document.createElement("h3");
    who.className = "who";
    who.textContent = role === "user" ? "You" : modelSelect.value || "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    el.append(who, body);
    list.append(el);
    return el;
  }

  function addUser(text) {
    const el = bubble("user");
    el.querySelector(".body").textContent = text;
    messages.push({ role: "user", content: text, el });
  }

  // An assistant answer's element: rendered Markdown, a note (finish reason, errors) and a
  // copy button for the raw text.
  function addAssistant() {
    const el = bubble("assistant");
    el.dataset.state = "streaming";
    const note = document.createElement("p");
    note.className = "note";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy this answer");
    copy.addEventListener("click", async () => {
      try {
        await Camelid.copyText(el.dataset.raw || "");
        copy.textContent = "Copied";
        // The button's label hides its text from screen readers: the status says it.
        say("Answer copied.");
      } catch (e) {
        copy.textContent = "Copy failed";
        say(e.message);
      }
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    });
    el.append(note, copy);
    return el;
  }

  // Follows the conversation as it grows, unless the visitor scrolled up to read.
  function nearEnd() {
    const doc = document.documentElement;
    return window.innerHeight + window.scrollY >= doc.scrollHeight - 120;
  }

  function scrollToEnd() {
    window.scrollTo(0, document.documentElement.scrollHeight);
  }

  function params() {
    return {
      temperature: Camelid.numberField(temperature, 0.7),
      max_tokens: Math.round(Camelid.numberField(maxTokens, 512)),
    };
  }

  // A reasoning model's thinking (`reasoning_content`, with `serve --reasoning-parser`):
  // folded above its answer, shown as plain text.
  function addThinking(el) {
    const details = document.createElement("details");
    details.className = "thinking";
    const summary = document.createElement("summary");
    summary.textContent = "Thinking…";
    const thought = document.createElement("div");
    thought.className = "thought";
    details.append(summary, thought);
    el.insertBefore(details, el.querySelector(".body"));
    return details;
  }

  // Streams one answer to the conversation so far; with `replaced` (Regenerate: the last
  // answer, hidden meanwhile), to the conversation before it, in its place once the new one
  // is an answer, back in view if the new one fails or is stopped before its first word.
  async function generate(replaced = null) {
    const el = addAssistant();
    const body = el.querySelector(".body");
    const note = el.querySelector(".note");
    let text = "";
    let thought = "";
    let thinking = null;
    let frame = 0;
    const render = () => {
      frame = 0;
      const follow = nearEnd();
      Camelid.renderMarkdown(body, text);
      if (thinking) thinking.querySelector(".thought").textContent = thought;
      el.dataset.raw = text;
      if (follow) scrollToEnd();
    };
    // Clear starts another conversation: this answer, stopped by it, joins neither.
    const conversation = messages;
    const asked = replaced ? messages.slice(0, -1) : messages;
    controller = new AbortController();
    setBusy(true);
    say("");
    let finish = null;
    try {
      const resp = await Camelid.api("v1/chat/completions", {
        method: "POST",
        body: {
          model: modelSelect.value,
          messages: asked.map(({ role, content }) => ({ role, content })),
          stream: true,
          ...params(),
        },
        signal: controller.signal,
      });
      if (!resp.ok) throw new Error(await Camelid.errorMessage(resp));
      for await (const chunk of Camelid.sseData(resp)) {
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.reasoning_content) {
          thought += choice.delta.reasoning_content;
          if (!thinking) thinking = addThinking(el);
          if (!frame) frame = requestAnimationFrame(render);
        }
        if (choice.delta && choice.delta.content) {
          text += choice.delta.content;
          if (!frame) frame = requestAnimationFrame(render);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      // A stream that ends without a finish reason was cut off (a proxy or the network
      // closed it): not an answer to keep.
      if (!finish) throw new Error("The connection closed before the answer was finished.");
      if (finish === "length") note.textContent = "Cut at the max tokens setting.";
      el.dataset.state = "done";
    } catch (e) {
      if (e.name === "AbortError") {
        note.textContent = "Stopped.";
        el.dataset.state = "stopped";
      } else {
        note.textContent = "Error: " + e.message;
        el.dataset.state = "error";
      }
    } finally {
      if (frame) cancelAnimationFrame(frame);
      render();
      if (thinking) thinking.querySelector("summary").textContent = "Thought";
      controller = null;
    }
    if (messages !== conversation) return;
    // A finished answer stays in the conversation, even one with no text (a reasoning model
    // whose max tokens ran out while it thought: its question is answered, if by nothing);
    // a stopped one too, as far as it got. A failed one, or one stopped before its first
    // word, does not (it leaves when the conversation moves on).
    const kept = el.dataset.state === "done" || (el.dataset.state === "stopped" && text !== "");
    if (!kept) {
      el.classList.add("failed");
      el.querySelector(".copy").remove();
      if (replaced) replaced.el.hidden = false;
    } else {
      if (replaced) {
        messages.pop();
        replaced.el.remove();
      }
      messages.push({ role: "assistant", content: text, el });
    }
    setBusy(false);
  }

  // Drops what a failed answer left: its element, and the question it did not answer (the
  // next message replaces it; two user turns in a row break alternating templates).
  function dropFailed() {
    list.querySelectorAll(".failed").forEach((el) => el.remove());
    const last = messages[messages.length - 1];
    if (last && last.role === "user") {
      messages.pop();
      if (last.el) last.el.remove();
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    if (!modelSelect.value) {
      // A list that did not load says so already (with its Try again); an empty one is
      // said here. The text stays.
      if (document.body.dataset.ready === "true") say("The server serves no model to send to.");
      return;
    }
    // A failed answer is dropped from the page when the conversation moves on.
    dropFailed();
    addUser(text);
    prompt.value = "";
    scrollToEnd();
    generate();
  });
  Camelid.enterSubmits(prompt, form);

  stopButton.addEventListener("click", () => controller && controller.abort());

  regenerateButton.addEventListener("click", () => {
    if (controller || messages.length === 0) return;
    list.querySelectorAll(".failed").forEach((el) => el.remove());
    const last = messages[messages.length - 1];
    if (last.role === "assistant") {
      // Kept until the new answer replaces it: a failed or stopped regenerate loses nothing.
      last.el.hidden = true;
      generate(last);
    } else {
      generate();
    }
  });

  clearButton.addEventListener("click", () => {
    if (controller) controller.abort();
    messages = [];
    list.replaceChildren();
    say("");
    setBusy(false);
    prompt.focus();
  });

  modelSelect.addEventListener("change", () => {
    try {
      localStorage.setItem(MODEL_STORE, modelSelect.value);
    } catch {
      // Storage off: the choice lasts as long as the page.
    }
  });

  async function loadModels() {
    try {
      const list = await Camelid.apiJson("v1/models");
      const ids = [...new Set(list.data.map((m) => m.id))];
      modelSelect.replaceChildren(
        ...ids.map((id) => {
          const o = document.createElement("option");
          o.value = o.textContent = id;
          return o;
        }),
      );
      let saved = null;
      try {
        saved = localStorage.getItem(MODEL_STORE);
      } catch {
        // Storage off: the first model.
      }
      if (saved && ids.includes(saved)) modelSelect.value = saved;
      document.body.dataset.ready = "true";
    } catch (e) {
      say("Cannot list the models: " + e.message + " ");
      const retry = document.createElement("button");
      retry.type = "button";
      retry.textContent = "Try again";
      retry.addEventListener("click", () => {
        say("");
        loadModels();
      });
      status.append(retry);
    }
  }

  setBusy(false);
  loadModels();
});
