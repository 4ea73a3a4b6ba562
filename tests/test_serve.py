"""The OpenAI-compatible server: API contract over a fake engine (fast), the official openai client, and the real
TransformersEngine on a tiny fine-tuned run."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

try:  # the HTTP client that starlette's TestClient and openai>=3 use; httpx before them
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

from domain_expert.serve.app import create_app
from domain_expert.serve.engine import (
    Admission,
    Engine,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
    UnknownModelError,
    find_stop,
)

KEY = "s3cret-key"


class FakeEngine:
    """Answers 'echo: <last user message>' word by word; `gate` (an asyncio.Event) makes generation block."""

    context_length = 64
    serving_path = "fake (echoes the question)"

    def __init__(self, max_queue: int = 2, gate: asyncio.Event | None = None):
        self.admission = Admission(max_queue)
        self.gate = gate
        self.requests: list[GenerationRequest] = []

    def model_ids(self):
        return ["tiny", "tiny:base"]

    def count_prompt_tokens(self, model, messages):
        if model not in self.model_ids():
            raise UnknownModelError(model)
        return sum(len(m["content"].split()) for m in messages)

    def _answer(self, req):
        words = ("echo: " + req.messages[-1]["content"]).split()
        words = words[: req.max_tokens]
        text = " ".join(words)
        cut = find_stop(text, req.stop)
        finish = "length" if len(words) == req.max_tokens else "stop"
        if cut >= 0:
            text, finish = text[:cut], "stop"
        prompt = self.count_prompt_tokens(req.model, req.messages)
        return GenerationResult(text, finish, prompt, len(words))

    async def generate(self, req):
        self.admission.admit()
        try:
            self.requests.append(req)
            if self.gate is not None:
                await self.gate.wait()
            return self._answer(req)
        finally:
            self.admission.release()

    async def stream(self, req):
        self.admission.admit()

        async def chunks():
            try:
                self.requests.append(req)
                result = self._answer(req)
                parts = result.text.split(" ")
                for i, w in enumerate(parts):
                    yield StreamChunk(w if i == 0 else " " + w)
                yield StreamChunk("", result)
            finally:
                self.admission.release()

        return chunks()


def client_for(engine=None, **kw) -> TestClient:
    return TestClient(create_app(engine or FakeEngine(), **kw))


def chat(**over):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "what is anemia"}], "max_tokens": 10}
    body.update(over)
    return body


def assert_error(resp, status, param=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_fake_engine_satisfies_protocol():
    assert isinstance(FakeEngine(), Engine)


def test_health_models_and_completion_shape():
    c = client_for()
    assert c.get("/health").json() == {"status": "ok", "serving_path": "fake (echoes the question)"}
    models = c.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny", "tiny:base"]
    assert c.get("/v1/models/tiny:base").json()["id"] == "tiny:base"
    assert_error(c.get("/v1/models/../../etc/passwd"), 404)
    r = c.post("/v1/chat/completions", json=chat(temperature=0, top_p=0.9, seed=3, stop=["zzz"], user="u"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "echo: what is anemia"}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_request_fields_reach_the_engine():
    eng = FakeEngine()
    c = client_for(eng)
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "define anemia"},
    ]
    r = c.post("/v1/chat/completions", json=chat(model="tiny:base", messages=msgs, stop="x", seed=7, temperature=0))
    assert r.status_code == 200, r.text
    req = eng.requests[-1]
    assert req.model == "tiny:base" and req.stop == ["x"] and req.seed == 7 and req.temperature == 0
    assert req.messages[1] == {"role": "user", "content": "hi there"} and req.max_tokens == 10
    # defaults: OpenAI's temperature 1, max_tokens up to the room left in the context
    c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "a b"}]})
    assert eng.requests[-1].temperature == 1.0 and eng.requests[-1].max_tokens == 64 - 2


def test_stop_and_length_finish_reasons():
    c = client_for()
    r = c.post("/v1/chat/completions", json=chat(stop=["is"])).json()
    assert r["choices"][0]["message"]["content"] == "echo: what " and r["choices"][0]["finish_reason"] == "stop"
    r = c.post("/v1/chat/completions", json=chat(max_tokens=2)).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 2


def test_streaming_sse():
    c = client_for()
    with c.stream("POST", "/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(x[len("data: ") :]) for x in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "echo: what is anemia"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 7


@pytest.mark.parametrize(
    "body,status,param",
    [
        (chat(model="nope"), 404, "model"),
        (chat(messages=[]), 400, "messages"),
        (chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages"),
        (chat(messages=[{"role": "assistant", "content": "x"}]), 400, "messages"),
        (chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), 400, "messages"),
        (chat(messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]), 400, "messages"),
        (chat(messages=[{"role": "system", "content": "a"}]), 400, "messages"),
        (chat(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), 400, "messages"),
        (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]), 400, None),
        (chat(max_tokens=-1), 400, "max_tokens"),
        (chat(max_tokens=0), 400, "max_tokens"),
        (chat(max_tokens=10**9), 400, "max_tokens"),
        (chat(max_completion_tokens=10**9), 400, "max_completion_tokens"),
        (chat(max_tokens=62), 400, "max_tokens"),  # fits the server limit, not the model's context
        (chat(messages=[{"role": "user", "content": "w " * 40}]), 400, "messages"),  # over max_prompt_tokens
        (chat(temperature=-0.5), 400, "temperature"),
        (chat(top_p=0), 400, "top_p"),
        (chat(n=17), 400, "n"),
        (chat(logprobs=True, stream=True), 400, "logprobs"),
        (chat(top_logprobs=2), 400, "top_logprobs"),
        (chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
        (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
        (chat(frequency_penalty=0.5), 400, "frequency_penalty"),
        (chat(messages=[{"role": "user", "content": "a", "extra": 1}]), 400, None),
        ({"messages": [{"role": "user", "content": "a"}]}, 400, "model"),
    ],
)
def test_bad_requests(body, status, param):
    c = client_for(max_prompt_tokens=30, max_tokens_limit=100)
    err = assert_error(c.post("/v1/chat/completions", json=body), status, param)
    assert err["type"] == "invalid_request_error"
    if body.get("n") == 17:
        assert "limit of 16" in err["message"]
    if "frequency_penalty" in body:
        assert "unknown field" in err["message"]


def test_malformed_json_and_body_limits():
    c = client_for(max_body_bytes=2000)
    headers = {"content-type": "application/json"}
    err = assert_error(c.post("/v1/chat/completions", content=b'{"model": "tiny", ', headers=headers), 400)
    assert err["code"] == "invalid_json"
    assert_error(c.post("/v1/chat/completions", content=b"[1, 2]", headers=headers), 400)
    assert_error(c.post("/v1/chat/completions", json=chat(messages=[{"role": "user", "content": "x" * 5000}])), 413)

    def chunked():  # no Content-Length: the limit still holds
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        yield b"x" * 5000
        yield b'"}]}'

    assert_error(c.post("/v1/chat/completions", content=chunked(), headers=headers), 413)
    assert_error(c.get("/nowhere"), 404)
    assert_error(c.get("/v1/chat/completions"), 405)


def test_api_key():
    c = client_for(api_key=KEY)
    assert c.get("/health").status_code == 200
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": "Bearer é".encode("latin-1")},
    ):
        err = assert_error(c.get("/v1/models", headers=headers), 401)
        assert err["code"] == "invalid_api_key"
        assert_error(c.post("/v1/chat/completions", json=chat(), headers=headers), 401)
    assert_error(c.get("/nowhere"), 401)  # unknown routes do not reveal themselves either
    ok = {"Authorization": f"Bearer {KEY}"}
    assert c.get("/v1/models", headers=ok).status_code == 200
    assert c.post("/v1/chat/completions", json=chat(), headers=ok).status_code == 200


def test_queue_full_is_429():
    async def scenario():
        gate = asyncio.Event()
        eng = FakeEngine(max_queue=2, gate=gate)
        transport = httpx.ASGITransport(app=create_app(eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            waiting = [asyncio.create_task(ac.post("/v1/chat/completions", json=chat())) for _ in range(3)]
            for _ in range(100):
                await asyncio.sleep(0.01)
                if eng.admission.pending == 3:
                    break
            assert eng.admission.pending == 3  # one running, two waiting
            refused = await ac.post("/v1/chat/completions", json=chat())
            refused_stream = await ac.post("/v1/chat/completions", json=chat(stream=True))
            gate.set()
            done = await asyncio.gather(*waiting)
            after = await ac.post("/v1/chat/completions", json=chat())
        return refused, refused_stream, done, after

    refused, refused_stream, done, after = asyncio.run(scenario())
    for r in (refused, refused_stream):
        err = assert_error(r, 429)
        assert err["type"] == "rate_limit_error" and r.headers["retry-after"]
    assert [r.status_code for r in done] == [200, 200, 200] and after.status_code == 200


def test_official_openai_client():
    openai = pytest.importorskip("openai")
    with client_for(api_key=KEY) as tc:
        oc = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=tc, max_retries=0)
        assert [m.id for m in oc.models.list()] == ["tiny", "tiny:base"]
        r = oc.chat.completions.create(
            model="tiny:base", messages=[{"role": "user", "content": "hello there"}], max_tokens=5, temperature=0
        )
        assert r.choices[0].message.content == "echo: hello there" and r.usage.prompt_tokens == 2
        chunks = list(
            oc.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hello there"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
        assert chunks[-1].usage.completion_tokens == 3
        with pytest.raises(openai.NotFoundError):
            oc.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="limit of 16"):
            oc.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=17)
        bad = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=tc, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


# --- the real engine on a tiny fine-tuned run ------------------------------------------------------------------


def test_transformers_engine_tuned_base_and_stream(tiny_tuned):
    from domain_expert.generate import generate_detailed
    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve import model_name
    from domain_expert.serve.engine import TransformersEngine

    ref_lm = load_for_inference(tiny_tuned, device="cpu", dtype="fp32")  # unmerged PEFT: the reference
    refs = {
        base: generate_detailed(ref_lm, ["What is anemia?"], base=base, max_new_tokens=6)[0]["text"]
        for base in (False, True)
    }
    name = model_name(tiny_tuned)
    # the engine merges the adapter into the weights and gives the base lane the adapter's delta back
    engine = TransformersEngine(load_for_inference(tiny_tuned, device="cpu", dtype="fp32"), name, max_queue=4)
    assert isinstance(engine, Engine) and engine.model_ids() == [name, name + ":base"]
    c = TestClient(create_app(engine))
    assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [name, name + ":base"]
    msgs = [{"role": "user", "content": "What is anemia?"}]
    answers = {}
    for model, base in ((name, False), (name + ":base", True)):
        r = c.post("/v1/chat/completions", json={"model": model, "messages": msgs, "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        u = body["usage"]
        assert u["prompt_tokens"] > 0 and 1 <= u["completion_tokens"] <= 6
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        answers[model] = body["choices"][0]["message"]["content"]
        # greedy through the server matches the project's own greedy generation (same prompt format)
        assert answers[model].strip() == refs[base]
    # sampling with a seed is reproducible
    sampled = [
        c.post(
            "/v1/chat/completions",
            json={"model": name, "messages": msgs, "max_tokens": 6, "temperature": 1.0, "seed": 11},
        ).json()["choices"][0]["message"]["content"]
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    # streaming: chunks then [DONE], the deltas add up to the whole answer
    body = {"model": name, "messages": msgs, "max_tokens": 6, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(x[6:]) for x in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == answers[name]
    assert events[-1]["usage"]["completion_tokens"] >= 1
    assert any(e["choices"] and e["choices"][0]["finish_reason"] in ("stop", "length") for e in events)
    # a stop string cuts the answer before it, in both modes
    assert len(answers[name]) >= 5
    first = answers[name][3:5]  # mid-answer: the stream must hold back text that could start a stop string
    r = c.post("/v1/chat/completions", json={**body, "stream": False, "stream_options": None, "stop": [first]})
    out = r.json()["choices"][0]
    assert first not in out["message"]["content"] and out["finish_reason"] == "stop"
    with c.stream("POST", "/v1/chat/completions", json={**body, "stop": [first]}) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x and x != "data: [DONE]"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed == out["message"]["content"] == answers[name][: answers[name].find(first)]
    engine.close()


def test_engine_stream_cancel_frees_the_slot_and_queue_limit(tiny_tuned):
    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve.engine import GenerationRequest, QueueFullError, TransformersEngine

    lm = load_for_inference(tiny_tuned, device="cpu", dtype="fp32")
    engine = TransformersEngine(lm, "run", max_queue=0, max_batch=1)
    msgs = [{"role": "user", "content": "What is anemia?"}]

    async def scenario():
        req = GenerationRequest(model="run", messages=msgs, max_tokens=40, temperature=0)
        stream = await engine.stream(req)
        with pytest.raises(QueueFullError):  # one running, none may wait
            await engine.generate(req)
        async for _ in stream:  # take one chunk, then hang up like a client that went away
            break
        await stream.aclose()
        assert engine.admission.pending == 0
        return await engine.generate(GenerationRequest(model="run:base", messages=msgs, max_tokens=3, temperature=0))

    result = asyncio.run(scenario())
    assert result.completion_tokens <= 3 and result.finish_reason in ("stop", "length")
    engine.close()


def test_serve_binds_localhost_by_default(tiny_tuned, monkeypatch, capsys):
    import uvicorn

    from domain_expert.serve import serve

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    serve(tiny_tuned, api_key=KEY, device="cpu", dtype="fp32")
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000
    c = TestClient(seen["app"])
    assert c.get("/health").status_code == 200 and c.get("/v1/models").status_code == 401
    # the tiny Llama passes the lean decoder's checks and probe: said at start-up and by /health
    path = c.get("/health").json()["serving_path"]
    assert path.startswith("lean (") and "probe passed" in path
    assert f"serving path: {path}" in capsys.readouterr().out
    ids = [m["id"] for m in c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]]
    assert ids == [tiny_tuned.name, tiny_tuned.name + ":base"]


def test_sagemaker_ping_and_invocations():
    c = client_for(api_key=KEY)
    assert c.get("/ping").status_code == 200  # the platform's health check needs no key
    assert_error(c.post("/invocations", json=chat()), 401)
    r = c.post("/invocations", json=chat(temperature=0), headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: what is anemia"
    assert_error(c.post("/invocations", json=chat(model="nope"), headers={"Authorization": f"Bearer {KEY}"}), 404)
