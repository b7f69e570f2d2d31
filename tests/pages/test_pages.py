"""The web pages of a running `camelid serve`, in headless Chromium (Python Playwright).

Usage: python test_pages.py BASE_URL API_KEY MODEL_1 MODEL_2 SCREENSHOT_DIR [CHROMIUM]
(run by crates/camelid/tests/pages_browser.rs against a server with that API key and those
two models). Chats, runs arena battles, votes, watches the leaderboard change, checks that
hostile markup in answers runs nothing, and saves a screenshot of each page, desktop and
phone width, into SCREENSHOT_DIR. Exits non-zero on the first failed check.
"""
import json
import re
import os
import sys
import urllib.request

from playwright.sync_api import sync_playwright

base, key, model_1, model_2, shots = sys.argv[1:6]
chromium = sys.argv[6] if len(sys.argv) > 6 else "/usr/bin/chromium"
os.makedirs(shots, exist_ok=True)
checks = 0
TIMEOUT_MS = 120_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def check(cond, what):
    global checks
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    checks += 1


def api(path, body):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def get_json(path):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


class Watch:
    """What a page did that it must not: dialogs opened, uncaught script errors."""

    def __init__(self, page):
        self.dialogs, self.errors = [], []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def clean(self, where):
        check(not self.dialogs, f"{where}: no dialog opened ({self.dialogs})")
        check(not self.errors, f"{where}: no script errors ({self.errors})")


def posted_bodies(page, path):
    """The JSON bodies the page POSTs to `path`, in order."""
    bodies = []
    page.on(
        "request",
        lambda r: bodies.append(json.loads(r.post_data))
        if r.method == "POST" and r.url.split("?")[0].endswith(path)
        else None,
    )
    return bodies


def no_horizontal_scroll(page, where):
    w = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    check(w[0] <= w[1], f"{where}: fits the width without scrolling sideways ({w})")


def wait_js(page, expr, what, timeout_ms=TIMEOUT_MS):
    """Polls a JS expression until true (wait_for_function evaluates strings with eval, which
    the pages' CSP rightly forbids)."""
    for _ in range(timeout_ms // 100):
        if page.evaluate(expr):
            return
        page.wait_for_timeout(100)
    check(False, f"{what}: timed out waiting for {expr}")


def set_settings(page, temperature, max_tokens):
    if page.locator("details[open]").count() == 0:
        page.click("details summary")
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))


def wait_answer(page, n):
    """Waits until the chat has n finished assistant answers; returns the last one's text."""
    wait_js(page,
            "document.querySelectorAll('.message.assistant:not([data-state=streaming]):not([hidden])')"
            f".length === {n} && !document.querySelector('.message.assistant[data-state=streaming]')",
            f"answer {n}")
    last = page.locator(".message.assistant").nth(n - 1)
    check(last.get_attribute("data-state") == "done", f"answer {n} done: {last.inner_text()}")
    return last


HOSTILE = (
    'Hello **bold** <img src=x onerror="window.__pwned=1;alert(1)"> '
    "<script>window.__pwned=2;alert(2)</script> [click me](javascript:window.__pwned=3) "
    "![pic](javascript:window.__pwned=4)\n\n"
    '<div onmouseover="window.__pwned=5">hover me</div>\n\n`<b>code</b>`'
)


def sse_body(text, piece=7):
    """A /v1/chat/completions stream whose deltas split `text` (tags cut across chunks)."""
    def chunk(delta, finish=None):
        return "data: " + json.dumps(
            {"object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"
    out = chunk({"role": "assistant", "content": ""})
    out += "".join(chunk({"content": text[i:i + piece]}) for i in range(0, len(text), piece))
    return out + chunk({}, "stop") + "data: [DONE]\n\n"


def sse_thinking(thought, text, piece=5, finish="stop"):
    """A stream whose thinking comes first as `delta.reasoning_content`, then the answer."""
    def chunk(delta, finish=None):
        return "data: " + json.dumps(
            {"object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"
    out = chunk({"role": "assistant", "content": ""})
    out += "".join(chunk({"reasoning_content": thought[i:i + piece]}) for i in range(0, len(thought), piece))
    out += "".join(chunk({"content": text[i:i + piece]}) for i in range(0, len(text), piece))
    return out + chunk({}, finish) + "data: [DONE]\n\n"


def check_escaped(page, body, where):
    """The hostile answer in `body` (a locator) shows as text and ran nothing."""
    text = body.inner_text()
    for literal in ['<img src=x onerror="window.__pwned=1;alert(1)">',
                    "<script>window.__pwned=2;alert(2)</script>",
                    '<div onmouseover="window.__pwned=5">', "<b>code</b>"]:
        check(literal in text, f"{where}: {literal!r} is shown as text: {text!r}")
    check(body.locator("strong").inner_text() == "bold", f"{where}: Markdown still renders")
    check(body.locator("img, script, div[onmouseover], b").count() == 0,
          f"{where}: no element made from the answer's markup: {body.inner_html()}")
    check(body.locator("[onerror], [onmouseover], [onclick]").count() == 0,
          f"{where}: no event-handler attributes")
    check(body.locator("a[href^='javascript']").count() == 0,
          f"{where}: no javascript: links: {body.inner_html()}")
    body.get_by_text("click me").click()
    body.get_by_text("pic").click()
    body.get_by_text("hover me").hover()
    page.wait_for_timeout(300)
    check(page.evaluate("window.__pwned") is None, f"{where}: no injected script ran")


def chat_page(ctx):
    page = ctx.new_page()
    watch = Watch(page)
    resp = page.goto(base + "/")
    check(resp.status == 200, "/ loads without a key")
    csp = resp.headers.get("content-security-policy", "")
    check("script-src 'self'" in csp and "unsafe-inline" not in csp, f"strict CSP: {csp!r}")

    # The server has keys: the page asks for one (a wrong one is asked again).
    dialog = page.locator("dialog.key-dialog[open]")
    dialog.wait_for(timeout=TIMEOUT_MS)
    # A key no HTTP header can carry (a curly quote pasted with it) is refused at once: kept,
    # it made every later fetch() throw before the server could ask again.
    page.fill("#api-key", "\u201csk-quoted\u201d")
    page.keyboard.press("Enter")
    wait_js(page,
            "document.querySelector('dialog.key-dialog[open]')?.textContent.includes('other characters')",
            "a key with a curly quote is refused")
    check(page.evaluate("localStorage.getItem('camelid.apiKey')") is None, "and not kept")
    page.fill("#api-key", "sk-wrong")
    page.keyboard.press("Enter")
    wait_js(page,
            "document.querySelector('dialog.key-dialog[open]')?.textContent.includes('did not accept')",
            "a wrong key is asked again")
    page.fill("#api-key", key)
    page.click("dialog.key-dialog button.primary")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    options = page.locator("#model option").all_inner_texts()
    check(model_1 in options and model_2 in options, f"models listed: {options}")
    check(page.evaluate("localStorage.getItem('camelid.apiKey')") == key,
          "the key is kept in the browser")

    bodies = posted_bodies(page, "/v1/chat/completions")
    page.select_option("#model", model_2)
    set_settings(page, 0, 12)
    page.fill("#prompt", "Name a fruit.")
    page.keyboard.press("Enter")  # Enter sends
    first = wait_answer(page, 1)
    want = api("/v1/chat/completions", {
        "model": model_2, "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "user", "content": "Name a fruit."}]})["choices"][0]["message"]["content"]
    check(bodies[-1]["stream"] is True and bodies[-1]["model"] == model_2
          and bodies[-1]["max_tokens"] == 12 and bodies[-1]["temperature"] == 0,
          f"the page streams with its settings: {bodies[-1]}")
    check(want.strip() != "", "the model answers something")
    first.locator("button.copy").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    check(copied == want, f"the streamed answer, copied, is the API's: {copied!r} vs {want!r}")

    # A second turn carries the first.
    page.fill("#prompt", "And another one?")
    page.click("#send")
    wait_answer(page, 2)
    sent = bodies[-1]["messages"]
    check([m["role"] for m in sent] == ["user", "assistant", "user"]
          and sent[1]["content"] == want, f"multi-turn request: {sent}")
    second = page.locator(".message.assistant").nth(1).get_attribute("data-raw")

    # Regenerate: the last answer again, for the same conversation (greedy: the same text).
    page.click("#regenerate")
    wait_answer(page, 2)
    check(bodies[-1]["messages"] == sent, "regenerate resends the same conversation")
    check(page.locator(".message.assistant").nth(1).get_attribute("data-raw") == second,
          "greedy regeneration gives the same answer")
    page.screenshot(path=f"{shots}/chat-desktop.png")
    # A regenerate that fails keeps the answer it would have replaced: on the page, and in
    # the conversation the next turn sends.
    page.route("**/v1/chat/completions",
               lambda route: route.fulfill(**api_error(429, "Too many requests.")))
    page.click("#regenerate")
    page.wait_for_selector(".message.assistant.failed", timeout=TIMEOUT_MS)
    page.unroute("**/v1/chat/completions")
    kept = page.locator(".message.assistant:not(.failed)")
    check(kept.count() == 2 and kept.nth(1).is_visible()
          and kept.nth(1).get_attribute("data-raw") == second,
          "the answer a failed regenerate would have replaced stands")

    # Stop: a long, high-temperature answer stopped after its first words stays, marked.
    set_settings(page, 2, 400)
    page.fill("#prompt", "Tell me a long story about llamas.")
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-state=streaming] .body:not(:empty)",
                           timeout=TIMEOUT_MS)
    check([m["content"] for m in bodies[-1]["messages"][:4]]
          == [m["content"] for m in sent] + [second],
          f"the next turn carries the kept answer: {bodies[-1]['messages']}")
    check(page.is_disabled("#send") and page.is_enabled("#stop"), "stop while streaming")
    page.click("#stop")
    page.wait_for_selector(".message.assistant[data-state=stopped]", timeout=TIMEOUT_MS)
    check("Stopped" in page.locator(".message.assistant").nth(2).inner_text(), "marked stopped")
    check(page.is_enabled("#send") and page.is_disabled("#stop"), "ready again after stop")

    page.click("#clear")
    check(page.locator(".message").count() == 0, "clear empties the conversation")

    # Escaping: an answer full of markup (served by a route in place of the server's stream).
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse_body(HOSTILE)))
    page.fill("#prompt", "Say something nasty.")
    page.click("#send")
    wait_answer(page, 1)
    check_escaped(page, page.locator(".message.assistant .body"), "chat")
    page.screenshot(path=f"{shots}/chat-escaping.png")
    page.unroute("**/v1/chat/completions")

    # A reasoning model's thinking (`reasoning_content`) is folded above the answer, as text,
    # and stays out of the conversation sent back.
    page.click("#clear")
    thought = "Let me think <b>hard</b> about it.\nTwo lines."
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body=sse_thinking(thought, "It is **4**.")))
    page.fill("#prompt", "2 + 2?")
    page.click("#send")
    answer = wait_answer(page, 1)
    details = answer.locator("details.thinking")
    check(details.count() == 1 and details.locator("summary").inner_text() == "Thought",
          f"the thinking is folded: {answer.inner_html()}")
    check(details.get_attribute("open") is None, "folded by default")
    details.locator("summary").click()
    check(details.locator(".thought").inner_text() == thought, "the thinking, as text")
    check(details.locator("b").count() == 0, "markup in the thinking is not rendered")
    check(answer.locator(".body strong").inner_text() == "4"
          and "think" not in answer.locator(".body").inner_text(), "the answer apart")
    page.unroute("**/v1/chat/completions")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse_body("Sure.")))
    page.fill("#prompt", "Thanks")
    page.click("#send")
    wait_answer(page, 2)
    check(bodies[-1]["messages"][1] == {"role": "assistant", "content": "It is **4**."},
          f"only the answer goes back: {bodies[-1]['messages']}")
    page.screenshot(path=f"{shots}/chat-thinking.png")
    page.unroute("**/v1/chat/completions")

    # Thinking that ran into max tokens finished the answer with no text: its question stays
    # answered (on the page and in the next turn's messages), not dropped as a failure.
    page.click("#clear")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body=sse_thinking("Hmm, " * 40, "", finish="length")))
    page.fill("#prompt", "Q-thought")
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-state=done]", timeout=TIMEOUT_MS)
    page.unroute("**/v1/chat/completions")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse_body("Sure.")))
    page.fill("#prompt", "And now?")
    page.click("#send")
    wait_answer(page, 2)
    sent = bodies[-1]["messages"]
    check([m["role"] for m in sent] == ["user", "assistant", "user"]
          and sent[0]["content"] == "Q-thought",
          f"the question answered by thinking alone stays: {sent}")
    check("Q-thought" in page.locator("#messages").inner_text(), "and on the page")
    page.unroute("**/v1/chat/completions")

    # Defence in depth: markup put into the page by hand still runs no inline handler (CSP).
    page.evaluate("""document.body.insertAdjacentHTML('beforeend',
        '<img src="x" onerror="window.__csp=1">')""")
    page.wait_for_timeout(500)
    check(page.evaluate("window.__csp") is None, "CSP blocks inline event handlers")

    # A stream cut off without a finish reason is a failed answer, not one to keep: the next
    # message goes without it and without the question it left unanswered.
    page.click("#clear")
    full = sse_body("A partial answer")
    cut = full[:full.rindex("data: ", 0, full.index("data: [DONE]"))]  # no finish, no [DONE]
    check("finish_reason\": \"stop" not in cut and cut.count("data: ") > 2, f"cut: {cut!r}")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=cut))
    page.fill("#prompt", "Q1")
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-state=error]", timeout=TIMEOUT_MS)
    check("closed" in page.locator(".message.assistant").inner_text(),
          "a cut-off stream says so")
    page.unroute("**/v1/chat/completions")
    set_settings(page, 0, 4)
    page.fill("#prompt", "Name a fruit.")
    page.click("#send")
    wait_answer(page, 1)
    check(bodies[-1]["messages"] == [{"role": "user", "content": "Name a fruit."}],
          f"no failed answer nor its question in the next turn: {bodies[-1]['messages']}")
    check(page.locator(".message.user").count() == 1, "the unanswered question left the page")

    # Clear while an answer streams: the stopped answer joins no conversation.
    set_settings(page, 2, 400)
    page.fill("#prompt", "Tell me a long story about llamas.")
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-state=streaming] .body:not(:empty)",
                           timeout=TIMEOUT_MS)
    page.click("#clear")
    page.wait_for_timeout(500)
    set_settings(page, 0, 4)
    page.fill("#prompt", "Hi")
    page.click("#send")
    wait_answer(page, 1)
    check(bodies[-1]["messages"] == [{"role": "user", "content": "Hi"}],
          f"nothing from before the clear: {bodies[-1]['messages']}")
    watch.clean("chat")
    page.close()


WATCH_PHASES = """
window.__phases = [];
new MutationObserver(() => window.__phases.push([document.body.dataset.phase,
    [...document.querySelectorAll('.votes button')].map((b) => b.disabled)]))
  .observe(document.body, {attributes: true, attributeFilter: ['data-phase']});
// Text an answer shows while it is still streaming: proof that answers arrive in pieces.
window.__partial = {a: [], b: []};
new MutationObserver(() => {
  for (const s of ['a', 'b']) {
    const el = [...document.querySelectorAll(`#answers-${s} .message.assistant`)].pop();
    const text = el && el.querySelector('.body').textContent;
    if (el && el.dataset.state === 'streaming' && text) window.__partial[s].push(text);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def arena_turn(page, prompt, send):
    """One turn of a battle; checks the vote buttons were disabled until both answers were
    complete (every phase change is recorded in the page, so a quick answer is not missed)."""
    page.evaluate("window.__phases = []; window.__partial = {a: [], b: []}")
    page.fill("#prompt", prompt)
    send()
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    phases = page.evaluate("window.__phases")
    check(phases[0] == ["waiting", [True] * 4] and phases[-1] == ["answered", [False] * 4],
          f"vote buttons disabled until both answers are complete: {phases}")
    partial = page.evaluate("window.__partial")
    for side in "ab":
        check(len(partial[side]) > 0, f"side {side} streamed (text shown before its end)")
    for side in "ab":
        answers = page.locator(f"#answers-{side} .message.assistant")
        check(answers.last.get_attribute("data-state") == "done", f"side {side} complete")
        check(answers.last.inner_text().strip() != "", f"side {side} answered")


def arena_battle(page, bodies, prompt, follow_up=None):
    """One battle up to the vote: leaves the page in phase `answered`."""
    arena_turn(page, prompt, lambda: page.click("#send"))
    first = bodies[-1]
    check(first["messages"] == [{"role": "user", "content": prompt}] and first["stream"] is True
          and "model" not in first and "battle_id" not in first, f"battle request: {first}")
    check(page.inner_text("#name-a") == "Model A" and page.inner_text("#name-b") == "Model B",
          "names hidden before the vote")
    if follow_up:
        arena_turn(page, follow_up, lambda: page.keyboard.press("Enter"))
        sent = bodies[-1]
        check(sent.get("battle_id", "").startswith("battle-")
              and re.fullmatch(r"[0-9a-f]{64}", sent.get("token", ""))
              and sent["messages"] == [{"role": "user", "content": follow_up}]
              and re.fullmatch(r"[0-9a-f]{16}", sent.get("revision", "")),
              f"the follow-up is a turn of the same battle (the answers shown), only the new prompt: {sent}")
        for side in "ab":
            check(page.locator(f"#answers-{side} .message.assistant[data-state=done]").count() == 2,
                  f"side {side}: two answers")
        check(page.inner_text("#name-a") == "Model A", "names still hidden after the follow-up")


def revealed(page):
    a = page.inner_text("#name-a").removeprefix("Model A: ")
    b = page.inner_text("#name-b").removeprefix("Model B: ")
    return a, b


def arena_and_leaderboard(ctx):
    board = ctx.new_page()
    board_watch = Watch(board)
    board.goto(base + "/leaderboard")
    board.wait_for_selector("body[data-votes]", timeout=TIMEOUT_MS)
    before = int(board.get_attribute("body", "data-votes"))

    page = ctx.new_page()
    watch = Watch(page)
    resp = page.goto(base + "/arena")
    check(resp.status == 200, "/arena loads")
    page.wait_for_selector("body[data-ready=true]")
    page.evaluate(WATCH_PHASES)
    bodies = posted_bodies(page, "/arena/battles")
    check(page.input_value("#max-tokens") == "", "max tokens left to the arena's limit")
    # The settings take the server's limits (its --arena-max-tokens 400,
    # --arena-max-tokens-floor 8, --arena-max-input-chars 3000 and --arena-min-temperature
    # 0; the page's own are the defaults, 0.7, 16 and none).
    check(page.get_attribute("#max-tokens", "max") == "400"
          and page.get_attribute("#max-tokens", "min") == "8"
          and page.get_attribute("#temperature", "min") == "0",
          f"settings bounded by /arena/config: max {page.get_attribute('#max-tokens', 'max')}, "
          f"floor {page.get_attribute('#max-tokens', 'min')}, "
          f"min {page.get_attribute('#temperature', 'min')}")
    # A prompt past the characters a turn takes (3001 "é": counted in characters, not
    # bytes) is not sent, nor cut: the page says why and keeps it.
    page.fill("#prompt", "é" * 3001)
    page.click("#send")
    page.wait_for_function("document.getElementById('status').textContent.includes('3000')",
                           timeout=TIMEOUT_MS)
    check(len(bodies) == 0 and page.input_value("#prompt") == "é" * 3001,
          f"an overlong prompt kept, not sent: {len(bodies)} sent")
    # Greedy turns (this server's --arena-min-temperature 0): the answers, and so the
    # ratings checked below, are reproducible.
    set_settings(page, 0, 16)
    check(all(page.locator(".votes button").nth(i).is_disabled() for i in range(4)),
          "no vote before a battle")

    arena_battle(page, bodies, "What is the capital of France?", follow_up="Why?")
    # Regenerate: the last turn answered again, in its place (no new turn), by the server.
    regens = posted_bodies(page, "/regenerate")
    arena_turn(page, "", lambda: page.click("#regenerate"))
    check(len(regens) == 1 and re.fullmatch(r"[0-9a-f]{64}", regens[0].get("token", ""))
          and "messages" not in regens[0] and regens[0]["stream"] is True,
          f"regenerate sends the battle's token and no prompt: {regens}")
    for side in "ab":
        check(page.locator(f"#answers-{side} .message").count() == 4
              and page.locator(f"#answers-{side} .message.assistant[data-state=done]").count() == 2,
              f"side {side}: still two turns after a regenerate")
    # A reload before the vote brings the battle back as it was: both turns, the names
    # hidden, the vote open (and cast below on the same battle).
    shown = {side: page.locator(f"#answers-{side} .message").all_inner_texts() for side in "ab"}
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.evaluate(WATCH_PHASES)
    check(page.get_attribute("body", "data-phase") == "answered"
          and page.is_enabled("#vote-a") and page.is_enabled("#send"),
          "a reload keeps the battle open to a vote or a follow-up")
    for side in "ab":
        back = page.locator(f"#answers-{side} .message").all_inner_texts()
        check(back == shown[side] and len(back) == 4,
              f"side {side}: the battle's turns come back after a reload: {back} vs {shown[side]}")
    check(page.inner_text("#name-a") == "Model A" and page.inner_text("#name-b") == "Model B",
          "names still hidden after a reload")
    # Vote with the keyboard: focus the button, press Enter.
    page.focus("#vote-a")
    page.keyboard.press("Enter")
    wait_js(page, "document.getElementById('name-a').textContent.includes(':')", "names revealed")
    a, b = revealed(page)
    check({a, b} == {model_1, model_2}, f"the names are revealed after the vote: {a}, {b}")
    check(all(page.locator(".votes button").nth(i).is_disabled() for i in range(4))
          and page.is_disabled("#prompt"), "one vote per battle; no follow-up after it")
    check(page.evaluate("document.activeElement.id") == "new-round", "focus moves to New round")
    page.screenshot(path=f"{shots}/arena-desktop.png")

    # The open leaderboard hears of the vote (sooner than its 15 s poll).
    board.wait_for_selector(f"body[data-votes='{before + 1}']", timeout=10_000)
    rows = board.locator("#rows tr")
    check(rows.count() == 2, f"two models on the leaderboard: {rows.all_inner_texts()}")
    api_board = get_json("/arena/leaderboard")
    check(api_board["battles"] == before + 1, "the API counts the vote")
    shown = [r.split("\t") for r in rows.all_inner_texts()]
    for row, want in zip(shown, api_board["leaderboard"]):
        check(row[1] == want["model"] and row[2] == f"{want['rating']:.0f}"
              and row[4] == str(want["battles"]), f"row {row} shows {want}")
    winner_row = next(r for r in shown if r[1] == a)
    check(winner_row[0] == "1", f"the winner of the only vote ranks first: {shown}")

    # New round, and a second battle voted the other way by mouse.
    page.click("#new-round")
    check(page.locator("#answers-a .message").count() == 0 and page.inner_text("#name-a") ==
          "Model A", "new round clears the battle and hides the names")
    # Stop: a long first turn stopped while it streams leaves no battle, and the page can
    # start one again.
    check(page.is_disabled("#stop"), "nothing to stop before a turn")
    set_settings(page, 2, 400)
    # Both sides may end (a sampled end token) between Playwright's check that Stop is enabled
    # and its click: the turn is then answered, not stopped, and is tried again in a new round.
    for attempt in range(3):
        page.fill("#prompt", "Tell me a long story about llamas.")
        page.click("#send")
        page.wait_for_selector(
            "#answers-a .message.assistant[data-state=streaming] .body:not(:empty)",
            timeout=TIMEOUT_MS)
        page.click("#stop")
        page.wait_for_selector("body[data-phase=idle], body[data-phase=answered]",
                               timeout=TIMEOUT_MS)
        if page.get_attribute("body", "data-phase") == "idle":
            break
        print(f"arena stop, attempt {attempt + 1}: both answers ended before Stop; again")
        page.click("#new-round")
    check(page.get_attribute("body", "data-phase") == "idle", "a streaming turn stopped")
    check(page.locator(".message.assistant[data-state=stopped]").count() == 2
          and "Stopped" in page.inner_text("#status"), "both sides marked stopped")
    check(page.is_disabled("#stop") and page.is_enabled("#send"), "ready again after stop")
    # Max tokens emptied: the page sends none and the turn takes the server's limit (this
    # server's --arena-max-tokens 400 is below the 512 the page once sent, refused each turn).
    set_settings(page, 0, 16)
    page.fill("#max-tokens", "")
    arena_battle(page, bodies, "Name a colour.")
    check("max_tokens" not in bodies[-1], f"no max_tokens from an empty field: {bodies[-1]}")
    check(page.locator(".message.assistant[data-state=stopped]").count() == 0,
          "the stopped turn left the page")
    # The vote reaches the server but its reply is lost on the way back; the visitor then
    # presses another button: the vote that counts (B) is shown with the names, not refused.
    def reply_lost(route):
        route.fetch()
        route.abort()

    page.route("**/arena/battles/*/vote", reply_lost)
    page.click("#vote-b")
    wait_js(page, "document.getElementById('status').textContent.includes('may have been')",
            "the lost reply is told")
    page.unroute("**/arena/battles/*/vote")
    check(page.get_attribute("body", "data-phase") == "answered" and page.is_enabled("#vote-a"),
          "the vote buttons open again after a lost reply")
    page.click("#vote-a")
    wait_js(page, "document.getElementById('name-b').textContent.includes(':')", "names revealed")
    check("earlier vote" in page.inner_text("#status"), page.inner_text("#status"))
    check(page.evaluate("document.getElementById('name-b').parentElement.classList"
                        ".contains('winner')")
          and page.locator("#vote-b.chosen[aria-pressed=true]").count() == 1
          and page.locator("#vote-a.chosen, #vote-a[aria-pressed]").count() == 0
          and "Your vote:" in page.inner_text("#status"),
          "the vote that counts (B) is marked, not the button pressed after")
    board.wait_for_selector(f"body[data-votes='{before + 2}']", timeout=10_000)
    board.screenshot(path=f"{shots}/leaderboard-desktop.png")

    # The style-control toggle: the table shows the style-controlled fit the API returns
    # (every vote here has both answers), with its coefficients; and back.
    api_board = get_json("/arena/leaderboard")
    styled = api_board["style_control"]
    check(styled["battles"] == before + 2, f"style control rates both votes: {styled}")

    def shows(rows_wanted, what):
        shown = [r.split("\t") for r in board.locator("#rows tr").all_inner_texts()]
        check(len(shown) == len(rows_wanted), f"{what}: {len(rows_wanted)} rows: {shown}")
        for row, want in zip(shown, rows_wanted):
            check(row[1] == want["model"] and row[2] == f"{want['rating']:.0f}"
                  and row[3] == f"{want['ci_low']:.0f} – {want['ci_high']:.0f}"
                  and row[4] == str(want["battles"]), f"{what}: row {row} shows {want}")

    check(board.get_attribute("body", "data-view") == "plain" and board.is_hidden("#style-note"),
          "the plain fit by default")
    board.click("#style-control")
    wait_js(board, "document.body.dataset.view === 'style'", "the style-controlled view")
    shows(styled["leaderboard"], "style control")
    note = board.inner_text("#style-note")
    check(f"{before + 2} votes with both answers rated" in note and "length" in note
          and "bold" in note, f"the style note: {note}")
    board.click("#style-control")
    wait_js(board, "document.body.dataset.view === 'plain'", "the plain view again")
    shows(api_board["leaderboard"], "plain again")
    check(board.is_hidden("#style-note"), "no style note in the plain view")

    # Escaping in the arena: both answers are the hostile text (a route stands in for the API).
    page.click("#new-round")
    fake = [{"battle_id": "battle-fake", "token": "0" * 64}]
    for side in "ab":
        fake += [{"side": side, "delta": HOSTILE}, {"side": side, "finish_reason": "stop"}]
    fake.append({"done": True})
    page.route("**/arena/battles", lambda route: route.fulfill(
        status=200, content_type="text/event-stream",
        body="".join(f"data: {json.dumps(e)}\n\n" for e in fake) + "data: [DONE]\n\n"))
    page.fill("#prompt", "Say something nasty.")
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    for side in "ab":
        check_escaped(page, page.locator(f"#answers-{side} .message.assistant .body"),
                      f"arena side {side}")
    page.unroute("**/arena/battles")
    watch.clean("arena")
    board_watch.clean("leaderboard")
    page.close()
    board.close()


def api_error(status, message, code=None):
    return dict(status=status, content_type="application/json", body=json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None,
                   "code": code}}))


def fake_battle_route(route):
    """Both sides answer "Hi." (a route stands in for the arena's stream)."""
    events = [{"battle_id": "battle-fake", "token": "0" * 64}]
    for side in "ab":
        events += [{"side": side, "delta": "Hi."}, {"side": side, "finish_reason": "stop"}]
    events.append({"done": True, "revision": "rev-1"})
    route.fulfill(status=200, content_type="text/event-stream",
                  body="".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n")


def fake_answers_route(text, revision=None):
    """A route answering a turn of battle-fake with `text` on both sides, stored as
    `revision` (None: the `done` event is lost, the stream ends after the answers)."""
    def fulfill(route):
        events = [{"battle_id": "battle-fake", "token": "0" * 64}]
        for side in "ab":
            events += [{"side": side, "delta": text}, {"side": side, "finish_reason": "stop"}]
        if revision:
            events.append({"done": True, "revision": revision})
        route.fulfill(status=200, content_type="text/event-stream",
                      body="".join(f"data: {json.dumps(e)}\n\n" for e in events)
                      + "data: [DONE]\n\n")
    return fulfill


def arena_regenerate(browser):
    """Regenerate on the arena page (routes stand in for the server): the new answers take
    the old ones' place (and stay after a reload); a failed regenerate brings the old ones
    back, which the vote then counts; after the vote there is nothing to regenerate."""
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    watch = Watch(page)
    page.goto(base + "/arena")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    check(page.is_disabled("#regenerate"), "nothing to regenerate before a battle")
    page.route("**/arena/battles", fake_battle_route)
    page.route("**/arena/battles/*/regenerate", fake_answers_route("Hello again.", "rev-2"))
    regens = posted_bodies(page, "/regenerate")
    votes = posted_bodies(page, "/vote")
    page.fill("#prompt", "Hi")
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    check(page.is_enabled("#regenerate"), "an answered turn can be regenerated")
    page.click("#regenerate")
    wait_js(page, "document.getElementById('status').textContent.includes('New answers')",
            "the regenerated answers")
    check(regens == [{"token": "0" * 64, "stream": True, "temperature": 0.7, "revision": "rev-1"}],
          f"regenerate sends the token, the answers shown and the settings only: {regens}")

    def shown(side):
        return page.locator(f"#answers-{side} .message:visible").all_inner_texts()

    for side in "ab":
        check([t.strip() for t in shown(side)] == ["Hi", "Hello again."],
              f"side {side}: the new answer in the old one's place: {shown(side)}")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    check([t.strip() for t in shown("a")] == ["Hi", "Hello again."],
          f"a reload shows the regenerated answers: {shown('a')}")
    page.unroute("**/arena/battles/*/regenerate")
    page.route("**/arena/battles/*/regenerate", lambda route: route.fulfill(
        **api_error(500, "The models could not answer this turn.", "arena_turn_failed")))
    page.click("#regenerate")
    wait_js(page, "document.getElementById('status').textContent.includes('earlier answers')",
            "the failed regenerate")
    for side in "ab":
        check([t.strip() for t in shown(side)] == ["Hi", "Hello again."],
              f"side {side}: a failed regenerate leaves the answers it would replace: {shown(side)}")
    check(page.get_attribute("body", "data-phase") == "answered" and page.input_value("#prompt") == "",
          "still open to a vote; the prompt is not refilled")
    page.route("**/arena/battles/*/vote", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(
            {"battle_id": "battle-fake", "model_a": "x", "model_b": "y", "winner": "tie",
             "anony": True})))
    page.click("#vote-tie")
    page.wait_for_selector("body[data-phase=voted]", timeout=TIMEOUT_MS)
    check(page.is_disabled("#regenerate"), "nothing to regenerate after the vote")
    check([v.get("revision") for v in votes] == ["rev-2"],
          f"the vote names the answers shown, the regenerated ones: {votes}")

    # A regenerate the server stored but whose `done` was lost: the page shows the old
    # answers again, so the server (here its route) refuses a vote on them, and the battle
    # is over rather than voted on answers the visitor is not looking at.
    page.click("#new-round")
    page.unroute("**/arena/battles/*/vote")
    page.unroute("**/arena/battles/*/regenerate")
    page.route("**/arena/battles/*/regenerate", fake_answers_route("Stored, unheard."))
    page.route("**/arena/battles/*/vote", lambda route: route.fulfill(
        **api_error(409, "Battle battle-fake holds answers this page has not shown",
                    "battle_changed")
        if json.loads(route.request.post_data).get("revision") == "rev-1" else
        api_error(500, "the page sent no revision")))
    page.fill("#prompt", "Hi")
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    page.click("#regenerate")
    wait_js(page, "document.getElementById('status').textContent.includes('earlier answers')",
            "the regenerate whose end was lost")
    page.click("#vote-a")
    page.wait_for_selector("body[data-phase=over]", timeout=TIMEOUT_MS)
    check(all(page.locator(".votes button").nth(i).is_disabled() for i in range(4))
          and page.is_enabled("#new-round"),
          "a vote on answers the server no longer holds ends the battle")
    watch.clean("arena regenerate")
    ctx.close()


def arena_when_the_server_refuses(browser):
    """What the arena page does when a turn or a vote is refused (routes stand in for the
    server): a failed turn gives the prompt back, with focus; a battle the server takes no
    more of (expired, already voted: perhaps this vote, its reply lost) ends, leaving only a
    new round; a vote not rated says so; the leaderboard counts unrated votes apart."""
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    watch = Watch(page)
    page.goto(base + "/arena")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    page.route("**/arena/battles", lambda route: route.fulfill(
        **api_error(400, "`max_tokens` may be at most 1024 in the arena, got 2000")))
    page.fill("#prompt", "Keep me\nplease")
    page.click("#send")
    wait_js(page, "document.getElementById('status').textContent.includes('1024')",
            "the refusal is shown")
    check(page.input_value("#prompt") == "Keep me\nplease", "a failed turn gives the prompt back")
    check(page.evaluate("document.activeElement.id") == "prompt", "focus back on the prompt")
    check(page.get_attribute("body", "data-phase") == "idle", "ready to send again")

    # A follow-up to a battle that expired: the battle is over.
    page.unroute("**/arena/battles")
    page.route("**/arena/battles", fake_battle_route)
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    page.unroute("**/arena/battles")
    page.route("**/arena/battles", lambda route: route.fulfill(
        **api_error(410, "battle battle-fake has expired; start a new one", "battle_expired")))
    page.fill("#prompt", "And then?")
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-phase=over]", timeout=TIMEOUT_MS)
    check(all(page.locator(".votes button").nth(i).is_disabled() for i in range(4))
          and page.is_disabled("#send") and page.is_enabled("#new-round"),
          "an expired battle takes no vote or follow-up, only a new round")
    check("vote now counts" not in page.inner_text("#status"), page.inner_text("#status"))
    check(page.evaluate("document.activeElement.id") == "new-round", "focus on New round")

    # A vote the server already has (another button after a lost reply): over too.
    page.click("#new-round")
    page.unroute("**/arena/battles")
    page.route("**/arena/battles", fake_battle_route)
    page.fill("#prompt", "Hi")
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    page.route("**/arena/battles/*/vote", lambda route: route.fulfill(
        **api_error(409, "battle battle-fake already has a vote", "battle_voted")))
    page.click("#vote-b")
    page.wait_for_selector("body[data-phase=over]", timeout=TIMEOUT_MS)
    check(all(page.locator(".votes button").nth(i).is_disabled() for i in range(4)),
          "no second vote")
    check(page.evaluate("document.activeElement.id") == "new-round", "focus on New round")

    # A vote recorded but not rated (the conversation named a model).
    page.click("#new-round")
    page.fill("#prompt", "Hi")
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    page.unroute("**/arena/battles/*/vote")
    page.route("**/arena/battles/*/vote", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(
            {"battle_id": "battle-fake", "model_a": "x", "model_b": "y", "winner": "tie",
             "anony": False})))
    page.click("#vote-tie")
    wait_js(page, "document.getElementById('status').textContent.includes('Thanks')",
            "the vote's reply")
    check("not rated" in page.inner_text("#status"), page.inner_text("#status"))
    watch.clean("arena refusals")

    board = {"battles": 3, "votes": 5, "computed_at": None, "leaderboard": [],
             "style_control": {"battles": 3, "leaderboard": [], "coefficients": None}}
    page.route("**/arena/leaderboard", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(board)))
    page.goto(base + "/leaderboard")
    wait_js(page, "document.getElementById('summary').textContent.includes('rated')",
            "the summary")
    summary = page.inner_text("#summary")
    check("3 votes rated" in summary and "2 more not rated" in summary, summary)
    ctx.close()


def tables_keep_their_words_on_a_phone(browser):
    """A Markdown table in an answer at phone width: each cell keeps its words whole (one
    line each) and the table scrolls sideways instead of shrinking cells to a letter a line."""
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    ctx.add_init_script(f"localStorage.setItem('camelid.apiKey', {json.dumps(key)})")
    page = ctx.new_page()
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    table = ("| Country | Capital | Population | Area | Currency |\n|---|---|---|---|---|\n"
             "| France | Paris | 68,000,000 | 643,801 | Euro |\n"
             "| Germany | Berlin | 84,000,000 | 357,022 | Euro |\n")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse_body(table)))
    page.fill("#prompt", "A table, please.")
    # Sent from the keyboard on Send: focus follows to Stop, then back to the prompt (not
    # dropped to the page when the focused button is disabled).
    page.focus("#send")
    page.keyboard.press("Enter")
    wait_answer(page, 1)
    wait_js(page, "document.activeElement.id === 'prompt'", "focus back on the prompt")
    lines = page.evaluate("""[...document.querySelectorAll('.message.assistant td')].map((td) => {
        const r = document.createRange(); r.selectNodeContents(td);
        return [td.textContent, new Set([...r.getClientRects()].map((x) => Math.round(x.top))).size];
    })""")
    check(lines and all(n == 1 for _, n in lines), f"cells on one line each: {lines}")
    no_horizontal_scroll(page, "a wide table on a phone")
    # A block of raw HTML in an answer is shown as text with its lines, not run or joined.
    def answered(prompt, text, n):
        """`text` as the routed answer to `prompt`, the `n`-th; its body's innerText."""
        page.unroute("**/v1/chat/completions")
        page.route("**/v1/chat/completions", lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=sse_body(text)))
        page.fill("#prompt", prompt)
        page.click("#send")
        wait_answer(page, n)
        return page.evaluate(
            "[...document.querySelectorAll('.message.assistant .body')].pop().innerText")

    block = '<div class="card">\n  <h1>Hi</h1>\n</div>'
    shown = answered("Some HTML, please.", block, 2)
    check(shown.strip() == block, f"the block's lines kept as text: {shown!r}")
    # A task list keeps which items are done (its boxes as characters: no <input> is let in).
    shown = answered("A task list, please.", "- [x] done\n- [ ] todo", 3)
    check("☑ done" in shown and "☐ todo" in shown, f"done and todo told apart: {shown!r}")
    # A phone's keyboard has no Shift+Enter: there Enter makes a new line; Send sends.
    page.fill("#prompt", "line one")
    page.focus("#prompt")
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type("line two")
    check(page.input_value("#prompt") == "line one\nline two"
          and page.locator(".message.assistant").count() == 3,
          f"Enter on a phone makes a new line: {page.input_value('#prompt')!r}")
    ctx.close()


def leaderboard_declined_key(browser):
    """A private arena's leaderboard asks for a key; a visitor who closes the dialog is not
    asked again by the page's own refreshes (a dialog every poll would take the page from
    them), only when they press Refresh. A route stands in for a server with keys."""
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    watch = Watch(page)
    asked = []
    unauthorized = json.dumps({"error": {"message": "Missing or invalid API key.",
                                         "type": "invalid_request_error", "param": None,
                                         "code": "invalid_api_key"}})
    page.route("**/arena/leaderboard", lambda route: (asked.append(1), route.fulfill(
        status=401, content_type="application/json", body=unauthorized)))
    page.goto(base + "/leaderboard")
    dialog = page.locator("dialog.key-dialog[open]")
    dialog.wait_for(timeout=TIMEOUT_MS)
    page.click("dialog.key-dialog button:not(.primary)")  # Cancel
    wait_js(page, "!document.querySelector('dialog.key-dialog[open]')", "the dialog closes")
    wait_js(page, "document.getElementById('summary').textContent.includes('API key')",
            "the page says a key is needed")
    requests = len(asked)
    # What the 15 s poll and a return to the tab run: no request, no dialog.
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_timeout(500)
    check(dialog.count() == 0 and len(asked) == requests,
          f"a declined key is not asked again by the refreshes ({len(asked) - requests} requests)")
    page.click("#refresh")
    dialog.wait_for(timeout=TIMEOUT_MS)
    check(len(asked) == requests + 1, "Refresh asks again")
    page.keyboard.press("Escape")
    wait_js(page, "!document.querySelector('dialog.key-dialog[open]')", "Escape closes it")
    watch.clean("leaderboard without a key")
    ctx.close()


def forget_key(browser):
    """A browser that keeps a key shows "Forget key" in the header; it removes the key (on a
    shared computer the next visitor must not use it), and the page asks for one again."""
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    watch = Watch(page)
    page.goto(base + "/")
    page.locator("dialog.key-dialog[open]").wait_for(timeout=TIMEOUT_MS)
    check(not page.is_visible("header.top button.forget-key"), "no Forget key without a key")
    page.fill("#api-key", key)
    page.click("dialog.key-dialog button.primary")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    forget = page.locator("header.top button.forget-key")
    check(forget.is_visible(), "Forget key shown once a key is kept")
    # Another tab of the same browser: it forgets the key too (its own copy included).
    other = ctx.new_page()
    other.goto(base + "/leaderboard")
    other.locator("header.top button.forget-key").wait_for(timeout=TIMEOUT_MS)
    forget.click()
    check(page.evaluate("localStorage.getItem('camelid.apiKey')") is None, "the key is removed")
    check(not forget.is_visible(), "and the button hidden")
    wait_js(other, "document.querySelector('header.top button.forget-key').hidden",
            "the other tab's button hidden")
    check(other.evaluate("Camelid.currentKey()") == "", "the other tab forgets its copy")
    other.close()
    page.reload()
    page.locator("dialog.key-dialog[open]").wait_for(timeout=TIMEOUT_MS)
    page.keyboard.press("Escape")
    watch.clean("forget key")
    ctx.close()


def private_arena_limits(browser):
    """A private arena's page reads its limits with the key the browser holds (a route
    stands in for a server with keys: 401 without it); before, it never sent one and kept
    its own settings, so turns past the server's limits failed."""
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.add_init_script(f"localStorage.setItem('camelid.apiKey', {json.dumps(key)})")
    page = ctx.new_page()
    watch = Watch(page)
    limits = {"min_temperature": 0.25, "max_tokens": 77, "max_turns": 5, "max_input_chars": 99}

    def config(route):
        if route.request.headers.get("authorization") == f"Bearer {key}":
            route.fulfill(status=200, content_type="application/json", body=json.dumps(limits))
        else:
            route.fulfill(**api_error(401, "Missing or invalid API key.", "invalid_api_key"))
    page.route("**/arena/config", config)
    page.goto(base + "/arena")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    check(page.get_attribute("#max-tokens", "max") == "77"
          and page.get_attribute("#temperature", "min") == "0.25",
          f"a private arena's limits read with the key: max "
          f"{page.get_attribute('#max-tokens', 'max')}, min "
          f"{page.get_attribute('#temperature', 'min')}")
    # At the battle's turn limit the page takes no follow-up (the server would refuse it)
    # and says what is left: here a limit of one turn. (The turn goes at all though the
    # temperature field's 0.7 is off its step of 0.1 from the minimum 0.25: the page clamps
    # the settings itself, the browser's form checks would block the send.)
    limits["max_turns"] = 1
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    page.route("**/arena/battles", fake_battle_route)
    page.fill("#prompt", "Name a fruit.")
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    check(page.is_disabled("#prompt") and page.is_disabled("#send")
          and page.is_enabled("#vote-tie") and page.is_enabled("#new-round"),
          "no follow-up past the turn limit; the vote and a new round stay")
    check("limit of 1 turn:" in page.locator("#status").inner_text(),
          f"it says so: {page.locator('#status').inner_text()!r}")
    watch.clean("private arena")
    ctx.close()


def chat_without_models(browser):
    """A server that serves no model (a route stands in for its empty list): Send says so
    and keeps the text, rather than doing nothing."""
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.add_init_script(f"localStorage.setItem('camelid.apiKey', {json.dumps(key)})")
    page = ctx.new_page()
    page.route("**/v1/models", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps({"object": "list", "data": []})))
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    page.fill("#prompt", "Anyone there?")
    page.keyboard.press("Enter")
    wait_js(page, "document.getElementById('status').textContent.includes('no model')",
            "an empty model list is said")
    check(page.input_value("#prompt") == "Anyone there?", "the text stays")
    ctx.close()


def phone(browser):
    """Each page at phone width: nothing wider than the screen; a screenshot each."""
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    ctx.add_init_script(f"localStorage.setItem('camelid.apiKey', {json.dumps(key)})")
    page = ctx.new_page()
    watch = Watch(page)
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    set_settings(page, 0, 24)
    page.fill("#prompt", "What is a llama?")
    page.click("#send")
    wait_answer(page, 1)
    no_horizontal_scroll(page, "chat on a phone")
    page.screenshot(path=f"{shots}/chat-phone.png")

    page.goto(base + "/arena")
    page.wait_for_selector("body[data-ready=true]")
    set_settings(page, 0, 16)
    page.fill("#prompt", "Name a fruit.")
    page.click("#send")
    page.wait_for_selector("body[data-phase=answered]", timeout=TIMEOUT_MS)
    page.click("#vote-tie")
    wait_js(page, "document.getElementById('name-a').textContent.includes(':')", "names revealed")
    no_horizontal_scroll(page, "arena on a phone")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=f"{shots}/arena-phone.png")
    # A voted battle is over: a reload starts afresh.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    check(page.get_attribute("body", "data-phase") == "idle"
          and page.locator("#answers-a .message").count() == 0,
          "a reload after the vote shows no battle")

    page.goto(base + "/leaderboard")
    page.wait_for_selector("body[data-votes]", timeout=TIMEOUT_MS)
    no_horizontal_scroll(page, "leaderboard on a phone")
    page.screenshot(path=f"{shots}/leaderboard-phone.png")
    watch.clean("phone")
    ctx.close()


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    chat_page(ctx)
    arena_and_leaderboard(ctx)
    ctx.close()
    leaderboard_declined_key(browser)
    arena_when_the_server_refuses(browser)
    arena_regenerate(browser)
    tables_keep_their_words_on_a_phone(browser)
    chat_without_models(browser)
    private_arena_limits(browser)
    forget_key(browser)
    phone(browser)
    browser.close()

print(f"{checks} passed, 0 failed")
