"""The chat page at GET /: served with a strict CSP (fast, no browser), then driven in headless Chromium (playwright on
the system chromium) against a real uvicorn server: the real TransformersEngine on the tiny fine-tuned run behind an
API key (401 until the key is entered, model picker, a streamed answer, compare base vs tuned side by side, the history
and settings that reach the engine), and a slow fake engine for what needs timing (incremental streaming, Stop, 429,
model text that looks like HTML)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from domain_expert.serve.app import create_app
from domain_expert.serve.engine import GenerationResult, QueueFullError, StreamChunk, UnknownModelError
from domain_expert.serve.page import chat_page

KEY = "page-key-123"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "no chromium binary on PATH (Debian/Ubuntu: apt-get install -y chromium)"
HTML_BAIT = "<b>bold</b> <img src=x onerror=window.pwned=1> "


class SlowEngine:
    """Streams HTML-looking bait then 'w0 w1 ...' (one word per max_token), `delay` seconds apart; `busy` refuses."""

    context_length = 4096

    def __init__(self, delay: float = 0.05):
        self.delay = delay
        self.busy = False
        self.requests = []

    def model_ids(self):
        return ["demo", "demo:base"]

    def count_prompt_tokens(self, model, messages):
        if model not in self.model_ids():
            raise UnknownModelError(model)
        return 1

    def _words(self, req):
        return [HTML_BAIT] + [f"w{i} " for i in range(req.max_tokens - 1)]

    async def generate(self, req):
        words = self._words(req)
        return GenerationResult("".join(words), "length", 1, len(words))

    async def stream(self, req):
        if self.busy:
            raise QueueFullError("server busy: 2 requests already waiting (max 2); retry later")
        self.requests.append(req)
        words = self._words(req)

        async def chunks():
            for w in words:
                await asyncio.sleep(self.delay)
                yield StreamChunk(w)
            yield StreamChunk("", GenerationResult("".join(words), "length", 1, len(words)))

        return chunks()


class Recording:
    """Passes everything to `engine`, keeping the requests the page made."""

    def __init__(self, engine):
        self.engine = engine
        self.requests = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def generate(self, req):
        self.requests.append(req)
        return await self.engine.generate(req)

    async def stream(self, req):
        self.requests.append(req)
        return await self.engine.stream(req)


# --- without a browser -----------------------------------------------------------------------------------------


def test_page_is_public_static_and_locked_down_by_csp():
    c = TestClient(create_app(SlowEngine(), api_key=KEY))
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert c.get("/v1/models").status_code == 401  # the page is open, the API behind it is not
    assert c.head("/").status_code == 200
    html = r.text
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    import base64
    import hashlib

    def sha(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert csp["script-src"] == sha(script) and csp["style-src"] == sha(style)
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    # self-contained and XSS-safe by construction: no remote resources, no HTML sinks, no inline handlers
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script
    assert not re.search(r"\son[a-z]+\s*=", html.replace(script, ""))
    assert "not a clinician" in html and "not medical advice" in html.lower()
    assert chat_page()[0] == r.content


# --- in headless Chromium --------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(app):
    """A real uvicorn server for `app` on a free localhost port, in a background thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
    with sync_api.sync_playwright() as p:
        # the system chromium: playwright's own browser downloads are never needed
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-proxy-server"])
        yield b
        b.close()


@contextlib.contextmanager
def chat_tab(browser, url):
    """A fresh tab on the page; fails the test on a script error or a Content-Security-Policy violation."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url + "/")
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


def ask(page, question: str):
    page.fill("#input", question)
    page.press("#input", "Enter")


def texts(locator) -> list[str]:
    return [t for t in locator.all_text_contents()]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_chat_page_real_engine_key_stream_and_compare(browser, tiny_tuned):
    from playwright.sync_api import expect

    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve import model_name
    from domain_expert.serve.engine import TransformersEngine

    name = model_name(tiny_tuned)
    engine = TransformersEngine(load_for_inference(tiny_tuned, device="cpu", dtype="fp32"), name, max_queue=4)
    rec = Recording(engine)
    try:
        with serving(create_app(rec, api_key=KEY)) as url, chat_tab(browser, url) as page:
            disclaimer = page.locator("#disclaimer")
            expect(disclaimer).to_be_visible()
            expect(disclaimer).to_contain_text("not a clinician")
            expect(disclaimer).to_contain_text("Not medical advice")

            # the page loads without a key; the API answers 401 and the page says what to do
            error = page.locator("#error")
            expect(error).to_be_visible()
            expect(error).to_contain_text("Error 401")
            expect(error).to_contain_text("API key")
            expect(page.locator("#key-box")).to_have_attribute("open", "")
            expect(page.locator("#send")).to_be_disabled()
            page.fill("#api-key", "wrong")
            page.click("#use-key")
            expect(error).to_contain_text("missing or wrong API key")
            page.fill("#api-key", KEY)
            page.click("#use-key")
            expect(error).to_be_hidden()
            expect(page.locator("#model option")).to_have_count(2)
            assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [name, name + ":base"]
            assert page.evaluate("sessionStorage.getItem('domain-expert.api-key')") == KEY
            assert page.evaluate("localStorage.length") == 0 and page.input_value("#api-key") == ""
            page.reload()  # the key lives as long as the tab
            expect(page.locator("#model option")).to_have_count(2)
            expect(error).to_be_hidden()

            # one question to the tuned model, greedy, short
            page.select_option("#model", name)
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "8")
            ask(page, "What is anemia?")
            reply = page.locator(".turn").nth(0).locator(".reply")
            expect(reply).to_have_count(1)
            expect(reply).to_have_attribute("data-state", "done", timeout=20_000)
            expect(reply.locator(".who")).to_contain_text(name)
            first = reply.locator(".text").text_content()
            assert first.strip()
            expect(reply.locator(".meta")).to_contain_text("tokens")
            expect(page.locator(".turn .msg.user .text")).to_have_text(["What is anemia?"])
            (req,) = rec.requests
            assert req.model == name and req.temperature == 0 and req.max_tokens == 8
            assert req.messages == [{"role": "user", "content": "What is anemia?"}]

            # compare: the same follow-up to base and tuned, side by side, each with the conversation so far
            page.check("#compare")
            ask(page, "And leukemia?")
            turn = page.locator(".turn").nth(1)
            replies = turn.locator(".reply")
            expect(replies).to_have_count(2)
            expect(turn.locator(".replies.compare")).to_have_count(1)
            for i in range(2):
                expect(replies.nth(i)).to_have_attribute("data-state", "done", timeout=20_000)
            assert [replies.nth(i).get_attribute("data-kind") for i in range(2)] == ["base", "tuned"]
            assert [replies.nth(i).get_attribute("data-model") for i in range(2)] == [name + ":base", name]
            labels = texts(replies.locator(".who"))
            assert labels[0].startswith("base") and name + ":base" in labels[0]
            assert labels[1].startswith("tuned") and labels[1].endswith(name)
            answers = texts(replies.locator(".text"))
            assert all(a.strip() for a in answers)
            boxes = [replies.nth(i).bounding_box() for i in range(2)]
            assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] and abs(boxes[0]["y"] - boxes[1]["y"]) < 2
            history = [
                {"role": "user", "content": "What is anemia?"},
                {"role": "assistant", "content": first},
                {"role": "user", "content": "And leukemia?"},
            ]
            assert sorted(r.model for r in rec.requests[1:]) == [name, name + ":base"]
            assert all(r.messages == history and r.max_tokens == 8 for r in rec.requests[1:])
    finally:
        engine.close()


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_chat_page_streams_stops_and_reports_busy(browser):
    from playwright.sync_api import expect

    engine = SlowEngine(delay=0.05)
    with serving(create_app(engine)) as url, chat_tab(browser, url) as page:
        expect(page.locator("#model option")).to_have_count(2)
        expect(page.locator("#error")).to_be_hidden()
        assert page.input_value("#model") == "demo"  # the tuned model is picked first
        page.fill("#max-tokens", "200")
        ask(page, "stream please")
        reply = page.locator(".reply").last
        text = reply.locator(".text")
        expect(text).to_contain_text("w3")  # words arrive while the answer is still streaming
        assert reply.get_attribute("data-state") == "streaming"
        expect(page.locator("#send")).to_be_disabled()
        # model text is text: the HTML bait shows literally and runs nothing
        assert text.text_content().startswith(HTML_BAIT)
        assert page.locator("#log img, #log b").count() == 0 and page.evaluate("window.pwned") is None
        page.click("#stop")
        expect(reply).to_have_attribute("data-state", "stopped")
        expect(page.locator("#send")).to_be_enabled()
        stopped = text.text_content()
        time.sleep(0.3)
        assert text.text_content() == stopped and "w150" not in stopped  # nothing more arrives after Stop

        # a follow-up carries the stopped partial answer as history
        page.fill("#max-tokens", "3")
        ask(page, "again")
        expect(page.locator(".reply").last).to_have_attribute("data-state", "done")
        assert [m["content"] for m in engine.requests[-1].messages] == ["stream please", stopped, "again"]
        expect(page.locator(".reply").last.locator(".meta")).to_contain_text("cut at max tokens")

        # busy server: the 429's message and a retry hint, in the answer's place
        engine.busy = True
        ask(page, "are you there?")
        busy = page.locator(".reply").last
        expect(busy).to_have_attribute("data-state", "error")
        expect(busy.locator(".meta")).to_contain_text("Error 429: server busy")
        expect(busy.locator(".meta")).to_contain_text("retry in 1 s")
        engine.busy = False

        # settings are checked before sending; Clear empties the conversation
        page.fill("#temperature", "3")
        ask(page, "too hot")
        expect(page.locator("#error")).to_contain_text("temperature must be a number from 0 to 2")
        assert page.locator(".turn").count() == 3
        page.click("#clear")
        expect(page.locator(".turn")).to_have_count(0)
        expect(page.locator("#empty")).to_be_visible()
