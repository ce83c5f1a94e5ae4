"""The UI in a real headless Chromium, driven by Selenium, against a live server with two tiny models.

Needs Debian's `chromium` and `chromium-driver`; skipped (with the reason) where they are missing.
The tests share one browser and one server and run in file order: the chat tests leave a
conversation behind for the screenshot, the arena battle leaves one ranked vote for the leaderboard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .live import API_KEY, MODELS, LiveServer, live_server, ui_config

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Screenshots for docs/ are written only when asked for (`make screenshots`): a test run leaves the tree as it was.
SHOTS = Path(os.environ.get("LLMSERVE_SCREENSHOT_DIR") or tempfile.gettempdir())
LONG_MAX_TOKENS = 3000  # ~10 s of tokens on two CPU cores: plenty of time to press Stop


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    votes = tmp_path_factory.mktemp("ui") / "votes.jsonl"
    with live_server(ui_config(tiny_model_dir, votes, api_keys=[API_KEY])) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions", "--lang=en-US"):
        options.add_argument(arg)
    # The performance log is Chrome's network log: the arena test reads what the page sent and got.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # An explicit driver path keeps Selenium Manager from looking for (or downloading) a driver.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout_s: float = 15.0) -> Any:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(condition)


def console_errors(driver: WebDriver) -> list[str]:
    """SEVERE browser-console entries since the last call (reading the log clears it)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def find(driver: WebDriver, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def set_value(driver: WebDriver, css: str, value: str) -> None:
    driver.execute_script("arguments[0].value = arguments[1]", find(driver, css), value)


def model_options(driver: WebDriver, css: str = "#model") -> list[str]:
    """Read in one script: the page may replace the options between two WebDriver calls."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(o => o.value)",
                                 f"{css} option")


def last_answer(driver: WebDriver) -> dict[str, str]:
    """The last answer's state and texts, read in one script (the page re-renders messages often)."""
    return driver.execute_script("""const all = document.querySelectorAll('article.msg-assistant');
        const a = all[all.length - 1]; if (!a) return {};
        const text = (css) => { const e = a.querySelector(css); return e ? e.innerText : ''; };
        return {state: a.dataset.state, role: text('.msg-role'), body: text('.msg-body'), meta: text('.msg-meta'),
                error: text('.msg-error'), count: String(all.length)};""")


def test_chat_page_asks_for_the_key_then_loads_without_console_errors(browser: WebDriver, server: LiveServer) -> None:
    browser.get(server.url + "/")
    panel = find(browser, "#key-panel")
    wait_for(browser, lambda d: panel.is_displayed())
    assert "needs an API key" in find(browser, "#key-message").text
    find(browser, "#key-input").send_keys(API_KEY)
    find(browser, "#key-form button[type=submit]").click()
    wait_for(browser, lambda d: model_options(d) == list(MODELS))
    assert all("v1/models" in e and "401" in e for e in console_errors(browser))

    browser.refresh()  # the key is in localStorage now: a clean load
    wait_for(browser, lambda d: model_options(d) == list(MODELS))
    assert not find(browser, "#key-panel").is_displayed()
    assert console_errors(browser) == []


def test_a_message_streams_a_reply_with_stats(browser: WebDriver, server: LiveServer) -> None:
    find(browser, "#clear").click()
    set_value(browser, "#max-tokens", "40")
    set_value(browser, "#system", "You are a concise assistant.")
    set_value(browser, "#prompt", 'Print **hello** in `Python`:\n```python\nprint("hello, world")\n```')
    find(browser, "#send").click()
    wait_for(browser, lambda d: last_answer(d)["state"] == "done")
    answer = last_answer(browser)
    assert answer["body"].strip() and answer["role"] in MODELS
    meta = answer["meta"]
    assert "tokens" in meta and "TTFT" in meta and "tok/s" in meta and "~" not in meta  # exact usage counts
    question = find(browser, "article.msg-user .msg-body")
    assert question.find_element(By.CSS_SELECTOR, "strong").text == "hello"
    assert question.find_element(By.CSS_SELECTOR, "pre code.language-python").text == 'print("hello, world")'
    saved = browser.execute_script("return JSON.parse(localStorage.getItem('llmserve.chat.conversation'))")
    assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["state"] == "done"

    set_value(browser, "#prompt", "And a list of three colours, please.")
    find(browser, "#send").click()
    wait_for(browser, lambda d: last_answer(d)["count"] == "2" and last_answer(d)["state"] == "done")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "ui-chat.png"))
    assert console_errors(browser) == []


def test_stop_aborts_the_request_on_the_server(browser: WebDriver, server: LiveServer) -> None:
    set_value(browser, "#max-tokens", str(LONG_MAX_TOKENS))
    # A random model samples its end-of-sequence token now and then (~1 answer in 15 before 300 tokens):
    # an answer that ends on its own before Stop is pressed proves nothing, so ask again.
    for _ in range(4):
        set_value(browser, "#prompt", "Write a very long story.")
        find(browser, "#send").click()
        wait_for(browser, lambda d: last_answer(d)["state"] != "streaming" or len(last_answer(d)["body"]) > 20)
        num_running = server.num_unfinished()
        browser.execute_script("document.querySelector('#stop').click()")  # a no-op if it just ended
        wait_for(browser, lambda d: last_answer(d)["state"] != "streaming", timeout_s=5)
        if last_answer(browser)["state"] == "stopped":
            break
    assert last_answer(browser)["state"] == "stopped" and num_running == 1
    deadline = time.monotonic() + 5
    while server.num_unfinished() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.num_unfinished() == 0
    assert last_answer(browser)["meta"].startswith("stopped ·")
    assert console_errors(browser) == []


def test_errors_show_as_readable_messages(browser: WebDriver, server: LiveServer) -> None:
    set_value(browser, "#max-tokens", "100000")  # past the context: a 400 from the server
    set_value(browser, "#prompt", "Too long")
    find(browser, "#send").click()
    wait_for(browser, lambda d: last_answer(d)["state"] == "error")
    assert "maximum context length" in last_answer(browser)["error"]

    browser.execute_script("""const s = document.querySelector('#model');
        s.append(new Option('gone-model', 'gone-model')); s.value = 'gone-model';""")
    set_value(browser, "#max-tokens", "8")
    find(browser, "#regenerate").click()
    wait_for(browser, lambda d: last_answer(d)["state"] == "error")
    error = last_answer(browser)["error"]
    assert "The model 'gone-model' does not exist" in error and "pick another model" in error
    wait_for(browser, lambda d: model_options(d) == list(MODELS))  # the list was refreshed
    assert all("chat/completions" in e for e in console_errors(browser))  # only the two failed requests


MARKDOWN_CASES = {
    "<script>alert(1)</script>": "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>",
    "[a](javascript:alert(1)) [b](https://x.org/?q=1&r=2)":
        '<p>[a](javascript:alert(1)) <a href="https://x.org/?q=1&amp;r=2" target="_blank" '
        'rel="noopener noreferrer">b</a></p>',
    "**bold** *it* `a<b>` snake_case": "<p><strong>bold</strong> <em>it</em> <code>a&lt;b&gt;</code> snake_case</p>",
    "- one\n- two\n\n3. three": '<ul><li>one</li><li>two</li></ul>\n<ol start="3"><li>three</li></ol>',
    "```js\nlet x = '<i>';": '<div class="code-block"><div class="code-head"><span>js</span><button type="button" '
                            'class="copy-code">Copy</button></div><pre><code class="language-js">let x = &#39;'
                            '&lt;i&gt;&#39;;</code></pre></div>',
}


def test_markdown_renderer_escapes_html_and_unsafe_links(browser: WebDriver, server: LiveServer) -> None:
    rendered = browser.execute_async_script("""const [sources, done] = arguments;
        import('./ui/static/markdown.js').then(m => done(sources.map(m.renderMarkdown)));""",
                                            list(MARKDOWN_CASES))
    assert dict(zip(MARKDOWN_CASES, rendered, strict=True)) == MARKDOWN_CASES


STREAM_CASES = [  # (SSE pieces, then the body fails?, HTTP status, headers) -> what streamChat says
    (['data: {"choices":[{"delta":{"content":"Hel"}}]}\n\ndata: {"choi', 'ces":[{"delta":{"content":"lo"},'
      '"finish_reason":"stop"}]}\n\n: ping\n\ndata: {"choices":[],"usage":{"completion_tokens":2}}\r\n\r\n',
      "data: [DONE]\n\n"], False, 200, {}),
    (['data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
      'data: {"error":{"message":"boom","type":"internal_error"}}\n\ndata: [DONE]\n\n'], False, 200, {}),
    (['data: {"choices":[{"delta":{"content":"a"}}]}\n\n'], True, 200, {}),
    (['data: {"choices":[{"delta":{"content":"a"}}]}\n\n'], False, 200, {}),
    (['{"error":{"message":"worker-0 is overloaded","type":"service_unavailable"}}'], False, 503,
     {"Retry-After": "3"}),
    (['{"error":{"message":"Incorrect API key provided","type":"authentication_error"}}'], False, 401, {}),
    (["<html>Bad gateway</html>"], False, 502, {}),
]
STREAM_OUTCOMES = [
    "ok: Hello, 2 tokens, stop",
    "The server failed while answering: boom",
    "The connection dropped in the middle of the answer.",
    "The connection closed before the answer finished.",
    "The server is busy or not ready: worker-0 is overloaded. Try again in 3 s.",
    "The API key was refused (Incorrect API key provided). Enter a valid key.",
    "The server failed: 502",
    "Could not reach the server: it may be down or the connection dropped.",
]


def test_stream_failures_become_readable_messages(browser: WebDriver, server: LiveServer) -> None:
    """Error events, dropped and cut connections, HTTP errors: fed to streamChat through a stand-in fetch."""
    outcomes = browser.execute_async_script("""const [cases, done] = arguments;
        const api = await import('./ui/static/api.js');
        const realFetch = window.fetch;
        const body = (pieces, fails) => new ReadableStream({start(c) {
            for (const p of pieces) c.enqueue(new TextEncoder().encode(p));
            if (fails) c.error(new TypeError('network error')); else c.close(); }});
        const outcomes = [];
        const run = async () => {
            try {
                const r = await api.streamChat({model: 'm', messages: []});
                outcomes.push(`ok: ${r.text}, ${r.usage.completion_tokens} tokens, ${r.finishReason}`);
            } catch (err) { outcomes.push(err.message); }
        };
        for (const [pieces, fails, status, headers] of cases) {
            window.fetch = async () => new Response(body(pieces, fails), {status, headers});
            await run();
        }
        window.fetch = async () => { throw new TypeError('Failed to fetch'); };
        await run();
        window.fetch = realFetch;
        done(outcomes);""", STREAM_CASES)
    assert outcomes == STREAM_OUTCOMES


def test_pages_fit_a_phone_width_screen(browser: WebDriver, server: LiveServer) -> None:
    browser.set_window_size(390, 844)
    try:
        for path in ("/", "/arena", "/leaderboard"):
            browser.get(server.url + path)
            wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete")
            assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            assert find(browser, "#key-button").is_displayed()
    finally:
        browser.set_window_size(1280, 1000)
    console_errors(browser)


# Runs before the page's own scripts: keeps every fetch's URL, body and (once it has all come) response text.
FETCH_LOG_SCRIPT = """window.fetchLog = [];
const realFetch = window.fetch;
window.fetch = async (input, init = {}) => {
  const entry = {url: String(input), body: init.body === undefined ? '' : String(init.body), response: null};
  window.fetchLog.push(entry);
  const response = await realFetch(input, init);
  response.clone().text().then((text) => { entry.response = text; }, () => { entry.response = '(unreadable)'; });
  return response;
};"""


def fetch_log(driver: WebDriver) -> list[dict[str, str]]:
    """The page's fetches so far, once every response has been read to its end."""
    wait_for(driver, lambda d: d.execute_script("return window.fetchLog.every(e => e.response !== null)"))
    return driver.execute_script("return window.fetchLog")


def network_requests(driver: WebDriver) -> list[dict[str, Any]]:
    """Requests Chrome sent since the last call (reading the performance log clears it)."""
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    return [e["params"]["request"] for e in events if e["method"] == "Network.requestWillBeSent"]


def test_arena_battle_keeps_names_secret_until_the_vote(browser: WebDriver, server: LiveServer) -> None:
    network_requests(browser)
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FETCH_LOG_SCRIPT})
    try:
        browser.get(server.url + "/arena")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete")
    prompt = "Which is bigger, a whale or a mouse?"
    set_value(browser, "#arena-max-tokens", "48")
    set_value(browser, "#arena-prompt", prompt)
    find(browser, "#arena-send").click()
    panes = [find(browser, "#pane-left"), find(browser, "#pane-right")]
    wait_for(browser, lambda d: all(p.get_attribute("data-state") == "done" for p in panes))
    for pane in panes:
        assert pane.find_element(By.CSS_SELECTOR, ".pane-body").text.strip()
        # No token counts or speed in a battle: they would help tell the models apart.
        assert pane.find_element(By.CSS_SELECTOR, ".pane-meta").text == "done"
        assert pane.find_element(By.CSS_SELECTOR, ".pane-name").text == ""  # hidden until the vote

    # Before the vote no real name is in the page, in what it sent, or in what it got back.
    html = browser.execute_script("return document.documentElement.outerHTML")
    fetches = fetch_log(browser)
    sent = network_requests(browser)
    assert [e["url"] for e in fetches] == ["ui/api/battle", "v1/chat/completions", "v1/chat/completions"]
    battle = json.loads(fetches[0]["response"])
    chats = [json.loads(e["body"]) for e in fetches[1:]]
    assert sorted(c["model"] for c in chats) == sorted([battle["left"], battle["right"]])
    assert all(c["max_tokens"] == 48 and "stream_options" not in c for c in chats)  # a battle asks no usage
    for chat, fetch in zip(chats, fetches[1:], strict=True):  # every chunk echoes the alias
        chunks = [json.loads(line[6:]) for line in fetch["response"].splitlines() if line.startswith("data: {")]
        assert {c["model"] for c in chunks} == {chat["model"]}
    assert sum(r["url"].endswith("/v1/chat/completions") for r in sent) == 2
    for name in MODELS:
        assert name not in html
        assert not any(name in e["url"] + e["body"] + e["response"] for e in fetches)
        assert not any(name in r["url"] + r.get("postData", "") for r in sent)

    find(browser, "#votes button[data-winner=left]").click()
    wait_for(browser, lambda d: "Vote recorded" in find(d, "#vote-result").text)
    left, right = (p.find_element(By.CSS_SELECTOR, ".pane-name").text for p in panes)
    assert {left, right} == set(MODELS)
    voted = fetch_log(browser)[-1]  # the vote named only the battle; its answer named the models
    assert voted["url"] == "ui/api/vote" and json.loads(voted["body"]) == {
        "battle_id": battle["battle_id"], "winner": "left", "prompt": prompt}
    assert (json.loads(voted["response"])["left"], json.loads(voted["response"])["right"]) == (left, right)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "ui-arena.png"))

    [line] = server.votes_path.read_text().splitlines()
    vote = json.loads(line)
    assert vote == {"left": left, "right": right, "winner": "left", "anonymous": True,
                    "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(), "time_s": vote["time_s"]}
    assert abs(vote["time_s"] - time.time()) < 60

    browser.get(server.url + "/leaderboard")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#board tbody tr")) == 2)
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#board tbody tr")]
    assert rows == [["1", left, "1016.0", "1", "1", "0", "0"], ["2", right, "984.0", "1", "0", "1", "0"]]
    assert find(browser, "#board-summary").text == "1 vote from anonymous battles."
    assert console_errors(browser) == []


def test_arena_side_by_side_shows_names_and_is_not_ranked(browser: WebDriver, server: LiveServer) -> None:
    browser.get(server.url + "/arena")
    Select(find(browser, "#mode")).select_by_value("side")
    wait_for(browser, lambda d: model_options(d, "#model-left") == list(MODELS))
    browser.execute_script("document.querySelector('#model-left').value = 'tiny-b';"
                           "document.querySelector('#model-right').value = 'tiny-a'")
    set_value(browser, "#arena-max-tokens", "8")
    set_value(browser, "#arena-prompt", "Name a colour.")
    find(browser, "#arena-send").click()
    panes = [find(browser, "#pane-left"), find(browser, "#pane-right")]
    wait_for(browser, lambda d: [p.find_element(By.CSS_SELECTOR, ".pane-name").text for p in panes]
             == ["tiny-b", "tiny-a"])  # named from the start
    wait_for(browser, lambda d: all(p.get_attribute("data-state") == "done" for p in panes))
    find(browser, "#votes button[data-winner=tie]").click()
    wait_for(browser, lambda d: "Vote recorded" in find(d, "#vote-result").text)
    assert "Model A was tiny-b, model B was tiny-a" in find(browser, "#vote-result").text

    named = json.loads(server.votes_path.read_text().splitlines()[-1])
    assert (named["left"], named["right"], named["winner"], named["anonymous"]) == ("tiny-b", "tiny-a", "tie", False)
    board = browser.execute_async_script("""const done = arguments[0];
        import('./ui/static/api.js').then(api => api.getJson('ui/api/leaderboard')).then(done);""")
    assert board["num_votes"] == 1  # still only the battle
    assert console_errors(browser) == []
