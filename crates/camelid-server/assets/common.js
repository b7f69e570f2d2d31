// What every page shares: the visitor's API key, calls to the server's API, the SSE reader,
// and Markdown rendering of model answers with everything a model writes escaped.
"use strict";

const Camelid = (() => {
  const KEY_STORE = "camelid.apiKey";

  // What an HTTP header can carry: a key with anything else (a smart quote, a zero-width
  // space pasted with it) would make every fetch() throw before a request leaves, so the
  // server could never answer 401 and the page could never ask again.
  const validKey = (key) => /^[\x21-\x7e]+$/.test(key);

  function storedKey() {
    try {
      const key = localStorage.getItem(KEY_STORE) || "";
      return validKey(key) ? key : "";
    } catch {
      return "";
    }
  }

  function storeKey(key) {
    try {
      localStorage.setItem(KEY_STORE, key);
    } catch {
      // Storage off (private mode): the key lasts as long as the page.
    }
    memoryKey = key;
    showForgetKey();
  }

  let memoryKey = storedKey();

  // "Forget key" in the page's header while this browser holds a key: on a shared computer
  // the next person must not use it (it stays in localStorage until removed). Another tab's
  // change to the stored key shows or hides it here too.
  let forgetButton = null;
  function showForgetKey() {
    if (!forgetButton) {
      const header = document.querySelector("header.top");
      if (!header) return;
      forgetButton = document.createElement("button");
      forgetButton.type = "button";
      forgetButton.className = "forget-key";
      forgetButton.textContent = "Forget key";
      forgetButton.title = "Remove the API key this browser keeps for this server";
      forgetButton.addEventListener("click", () => {
        try {
          localStorage.removeItem(KEY_STORE);
        } catch {
          // Storage off: only this page's copy was there.
        }
        memoryKey = "";
        showForgetKey();
      });
      header.append(forgetButton);
    }
    forgetButton.hidden = !currentKey();
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", showForgetKey);
  } else {
    showForgetKey();
  }
  window.addEventListener("storage", (e) => {
    if (e.key !== KEY_STORE && e.key !== null) return;
    // Forgotten in another tab: this page's copy goes too (it would keep sending it).
    if (e.key === null || e.newValue === null) memoryKey = "";
    showForgetKey();
  });

  // The key to send: the stored one (read each time: another tab may have stored one since
  // this page loaded), else this page's own (storage off).
  function currentKey() {
    return storedKey() || memoryKey;
  }

  // One key dialog at a time: every call that got a 401 waits for the same answer.
  let asking = null;

  function askForKey(wrong) {
    if (asking) return asking;
    asking = new Promise((resolve, reject) => {
      const dialog = document.createElement("dialog");
      dialog.className = "key-dialog";
      const form = document.createElement("form");
      const title = document.createElement("h2");
      title.textContent = "API key";
      title.id = "key-dialog-title";
      const note = document.createElement("p");
      note.id = "key-dialog-note";
      dialog.setAttribute("aria-labelledby", title.id);
      dialog.setAttribute("aria-describedby", note.id);
      note.textContent = wrong
        ? "The server did not accept that key. Enter another one."
        : "This server needs an API key. It is kept in this browser only.";
      const input = document.createElement("input");
      input.type = "password";
      input.id = "api-key";
      input.autocomplete = "off";
      input.setAttribute("aria-label", "API key");
      const buttons = document.createElement("div");
      buttons.className = "buttons";
      const save = document.createElement("button");
      save.type = "submit";
      save.className = "primary";
      save.textContent = "Use this key";
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      buttons.append(save, cancel);
      form.append(title, note, input, buttons);
      dialog.append(form);
      document.body.append(dialog);
      const close = (key) => {
        dialog.close();
        dialog.remove();
        asking = null;
        if (key) {
          storeKey(key);
          resolve();
        } else {
          const declined = new Error("An API key is needed to use this server.");
          declined.name = "KeyDeclined";
          reject(declined);
        }
      };
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const key = input.value.trim();
        if (key && !validKey(key)) {
          note.textContent =
            "A key is letters, digits and punctuation; this one has other characters " +
            "(a curly quote or a hidden space copied with it?).";
          input.select();
        } else if (key) {
          close(key);
        }
      });
      cancel.addEventListener("click", () => close(null));
      dialog.addEventListener("cancel", (e) => {
        e.preventDefault();
        close(null);
      });
      dialog.showModal();
      input.focus();
    });
    return asking;
  }

  // fetch() against the server's API (a path relative to the page, so the pages work under a
  // path prefix too), with the visitor's key; a 401 asks for a key and tries again.
  async function api(path, { method = "GET", body, signal } = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = {};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const key = currentKey();
      if (key) headers["Authorization"] = "Bearer " + key;
      const resp = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
      if (resp.status !== 401) return resp;
      await askForKey(attempt > 0 || key !== "");
    }
  }

  // The Error of a failed reply: the OpenAI error body's message (or the status line), with
  // `status` and `code` for the pages to act on; a 429 says when to try again.
  async function apiError(resp) {
    let message = `HTTP ${resp.status} ${resp.statusText}`;
    let code = null;
    let body = null;
    try {
      const j = await resp.json();
      body = j;
      if (j && j.error && j.error.message) message = j.error.message;
      if (j && j.error && j.error.code) code = j.error.code;
    } catch {
      // Not JSON: the status says what went wrong.
    }
    const retry = Number(resp.headers.get("Retry-After"));
    if (resp.status === 429 && retry > 0) message += ` (try again in ${retry} s)`;
    const err = new Error(message);
    err.status = resp.status;
    err.code = code;
    // The whole body: some errors carry more than `error` (a battle's vote already cast).
    err.body = body;
    return err;
  }

  // The message of an OpenAI error body, or the status line.
  async function errorMessage(resp) {
    return (await apiError(resp)).message;
  }

  // A JSON API call: the parsed body, or an Error with the server's message and code.
  async function apiJson(path, opts) {
    const resp = await api(path, opts);
    if (!resp.ok) throw await apiError(resp);
    return resp.json();
  }

  // Server-sent events of a fetch() response (EventSource cannot POST): yields each `data:`
  // payload parsed as JSON, until `[DONE]` or the end of the body. An `{"error": …}` event
  // (the server's mid-stream error) is thrown.
  async function* sseData(resp) {
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trimStart();
          if (data === "[DONE]") return;
          const event = JSON.parse(data);
          if (event && event.error) {
            // Its code tells the page what ended (a battle voted or expired meanwhile).
            const err = new Error(event.error.message || "server error");
            err.code = event.error.code || null;
            throw err;
          }
          yield event;
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  function escapeHtml(s) {
    return String(s)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Markdown: raw HTML in an answer is shown as text (escaped), images become links (no
  // request leaves on the visitor's behalf), and DOMPurify cleans what marked made (links to
  // `javascript:` and the like). The pages' Content-Security-Policy forbids inline script as
  // a last line of defence.
  let markdown = null;

  function markdownParser() {
    if (markdown) return markdown;
    markdown = new marked.Marked({ gfm: true, breaks: true });
    markdown.use({
      renderer: {
        html({ text, block }) {
          // A block of HTML keeps its lines (shown as the text it is, never run).
          return block ? `<div class="raw-html">${escapeHtml(text)}</div>` : escapeHtml(text);
        },
        image({ href, text }) {
          return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
        },
        // A task list's box as a character: DOMPurify drops `<input>`, which left `- [x]`
        // and `- [ ]` items alike.
        checkbox({ checked }) {
          return checked ? "☑ " : "☐ ";
        },
      },
    });
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
    return markdown;
  }

  function renderMarkdown(element, text) {
    const html = markdownParser().parse(text);
    element.innerHTML = DOMPurify.sanitize(html, {
      FORBID_TAGS: ["style", "img", "form", "input", "button", "textarea", "select"],
      FORBID_ATTR: ["style"],
    });
  }

  // Copies text; navigator.clipboard needs a secure context (https or localhost), so a page
  // opened over plain http elsewhere falls back to a selected hidden textarea.
  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) throw new Error("copy refused by the browser");
  }

  // A number field's value within [min, max]; when empty or not a number the fallback, also
  // within them (a null fallback stays null: the field left to the server).
  function numberField(input, fallback) {
    let v = Number.parseFloat(input.value);
    if (!Number.isFinite(v)) {
      if (fallback === null) return null;
      v = fallback;
    }
    const min = input.min === "" ? -Infinity : Number(input.min);
    const max = input.max === "" ? Infinity : Number(input.max);
    return Math.min(max, Math.max(min, v));
  }

  // Enter sends the form, Shift+Enter makes a new line. Not on touch screens, whose
  // keyboards have no Shift+Enter: there Enter makes a new line and the button sends (as
  // ChatGPT's mobile page does). Safari ends an IME composition with an Enter whose
  // isComposing is false but whose keyCode is 229: that one does not send either.
  function enterSubmits(textarea, form) {
    const touch = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
    textarea.addEventListener("keydown", (e) => {
      if (e.key !== "Enter" || e.shiftKey || e.isComposing || e.keyCode === 229 || touch) return;
      e.preventDefault();
      if (form.requestSubmit) form.requestSubmit();
      else form.dispatchEvent(new Event("submit", { cancelable: true }));
    });
  }

  return {
    currentKey,
    api,
    apiJson,
    apiError,
    errorMessage,
    sseData,
    renderMarkdown,
    copyText,
    numberField,
    enterSubmits,
  };
})();
