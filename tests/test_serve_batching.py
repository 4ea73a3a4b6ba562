"""The continuous-batching engine on a tiny fine-tuned run: batched answers equal one-at-a-time answers, the base
lane gives the base model's exact log-probs with one (merged) copy of the weights, /v1/completions (logprobs, echo,
scoring with max_tokens 0, n, lists, streaming), /metrics, CORS, and the vLLM engine's missing-package error."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math

import pytest
from fastapi.testclient import TestClient

from domain_expert.serve.app import create_app
from domain_expert.serve.engine import GenerationRequest, TransformersEngine

QUESTIONS = ["What is anemia?", "Define fever.", "What does tachycardia mean in a patient with a long history?", "Hi"]


def _perturbed_lm(tiny_tuned):
    """The tiny run's adapter barely moved in 2 steps; make its delta large so tuned and base clearly differ."""
    import torch

    from domain_expert.models.loader import load_for_inference

    lm = load_for_inference(tiny_tuned, device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(0)
    for name, p in lm.model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    return lm


@pytest.fixture(scope="module")
def engine_and_ref(tiny_tuned):
    lm = _perturbed_lm(tiny_tuned)
    ref = copy.deepcopy(lm)  # unmerged PEFT model: adapter on = tuned, disable_adapter() = base
    engine = TransformersEngine(lm, "run", max_queue=8, max_batch=4)
    yield engine, ref
    engine.close()


def _ask(engine, model, question, max_tokens=12, **kw):
    msgs = [{"role": "user", "content": question}]
    return GenerationRequest(model=model, messages=msgs, max_tokens=max_tokens, temperature=0, **kw)


def test_batched_answers_equal_one_at_a_time(engine_and_ref):
    engine, _ = engine_and_ref
    reqs = [_ask(engine, m, q, max_tokens=4 + 3 * i) for i, q in enumerate(QUESTIONS) for m in ("run", "run:base")]

    async def alone():
        return [await engine.generate(r) for r in reqs]

    async def together():  # 8 requests, batch of 4: rows join and leave mid-flight, in both lanes
        return await asyncio.gather(*(engine.generate(r) for r in reqs))

    one = asyncio.run(alone())
    many = asyncio.run(together())
    assert [r.text for r in many] == [r.text for r in one]
    assert [r.completion_tokens for r in many] == [r.completion_tokens for r in one]
    # tuned and base really differ (the perturbed delta), so the lanes are not mixed up
    assert [r.text for r in one[0::2]] != [r.text for r in one[1::2]]


def test_arrivals_prefilled_inside_decoding_steps_answer_alike(engine_and_ref):
    """Requests that arrive while their lane decodes are prefilled in the same pass as its decoding step
    (LeanDecoder.mixed): the answers, in both lanes, are those of one request at a time, and of separate prefills."""
    engine, _ = engine_and_ref
    sched = engine.scheduler
    mixed, groups = sched.lean.mixed, []
    # rows of each prefill that ran inside a decoding step
    sched.lean.mixed = lambda p, *a, **k: groups.append(p[1][0].shape[0] if len(p) > 1 else 0) or mixed(p, *a, **k)
    # batch of 4: the two 3-token answers leave together, and two waiting requests join the two still decoding
    lengths = [3, 3, 16, 16, 8, 8, 8, 8]
    reqs = [_ask(engine, m, QUESTIONS[i % 4], max_tokens=n) for m in ("run", "run:base") for i, n in enumerate(lengths)]

    async def together(lane_reqs):
        return await asyncio.gather(*(engine.generate(r) for r in lane_reqs))

    def per_lane():
        return asyncio.run(together(reqs[:8])) + asyncio.run(together(reqs[8:]))

    async def alone():
        return [await engine.generate(r) for r in reqs]

    try:
        mixed_answers = per_lane()
        assert groups and max(groups) >= 2  # prefills of two rows did run inside decoding steps
        sched.mix_prefill = False
        groups.clear()
        separate = per_lane()
        assert not any(groups)
        one = asyncio.run(alone())
    finally:
        sched.lean.mixed, sched.mix_prefill = mixed, True
    assert [r.text for r in mixed_answers] == [r.text for r in one] == [r.text for r in separate]
    assert [r.completion_tokens for r in mixed_answers] == [r.completion_tokens for r in one]


def test_lean_and_transformers_forward_answer_alike(engine_and_ref, tiny_tuned):
    """The engine runs the lean decoder on this Llama; the transformers forward (`--decoder transformers`) gives the
    same answers in both lanes, batched."""
    engine, _ = engine_and_ref
    assert engine.scheduler.lean is not None
    other = TransformersEngine(_perturbed_lm(tiny_tuned), "run", max_queue=8, max_batch=4, decoder="transformers")
    try:
        assert other.scheduler.lean is None
        reqs = [_ask(engine, m, q, max_tokens=10) for q in QUESTIONS for m in ("run", "run:base")]

        async def answers(eng):
            return await asyncio.gather(*(eng.generate(r) for r in reqs))

        assert [r.text for r in asyncio.run(answers(engine))] == [r.text for r in asyncio.run(answers(other))]
    finally:
        other.close()


@pytest.mark.slow  # torch.compile of the decoding step: ~40 s
def test_compiled_decoding_steps_answer_alike(engine_and_ref, tiny_tuned):
    """`serve --compile`: the tuned lane's decoding steps go through the compiled step (compiled before the engine
    is ready), the base lane's stay eager, and both lanes answer as the eager engine does, batched."""
    engine, _ = engine_and_ref
    other = TransformersEngine(_perturbed_lm(tiny_tuned), "run", max_queue=8, max_batch=4, compile=True)
    try:
        sched = other.scheduler
        compiled, rows = sched.compiled, []
        sched.compiled = lambda ids, *a: rows.append(ids.shape[0]) or compiled(ids, *a)
        reqs = [_ask(engine, m, q, max_tokens=10) for q in QUESTIONS for m in ("run", "run:base")]

        async def answers(eng):
            return await asyncio.gather(*(eng.generate(r) for r in reqs))

        assert [r.text for r in asyncio.run(answers(other))] == [r.text for r in asyncio.run(answers(engine))]
        assert rows and max(rows) > 1  # batched decoding steps ran compiled
    finally:
        other.close()


def test_unknown_decoder_is_refused(tiny_tuned):
    with pytest.raises(ValueError, match="decoder must be auto, lean or transformers"):
        TransformersEngine(lambda: None, "run", decoder="fast")


def test_lanes_score_like_the_unmerged_model(engine_and_ref):
    import torch

    engine, ref = engine_and_ref
    c = TestClient(create_app(engine))
    text = "Anemia is a reduction in red blood cells."
    ids = ref.tokenizer(text)["input_ids"]
    for model, base in (("run", False), ("run:base", True)):
        r = c.post(
            "/v1/completions", json={"model": model, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 2}
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == text
        lp = choice["logprobs"]
        assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == len(ids)
        with torch.no_grad(), ref.model.disable_adapter() if base else contextlib.nullcontext():
            logits = ref.model(input_ids=torch.tensor([ids])).logits.float()
        want = torch.log_softmax(logits[0, :-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        got = torch.tensor(lp["token_logprobs"][1:])
        assert torch.allclose(got, want, atol=1e-4), (model, (got - want).abs().max())
        assert all(1 <= len(t) <= 2 for t in lp["top_logprobs"][1:])  # a dict: pieces that decode alike merge
        assert r.json()["usage"]["completion_tokens"] == 0


def test_completions_route(engine_and_ref):
    engine, _ = engine_and_ref
    c = TestClient(create_app(engine))
    body = {"model": "run", "prompt": ["Fever is", "Anemia is"], "max_tokens": 5, "temperature": 0, "logprobs": 1}
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and [ch["index"] for ch in out["choices"]] == [0, 1]
    for ch in out["choices"]:
        lp = ch["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) >= 1
        assert all(x <= 0 for x in lp["token_logprobs"]) and lp["text_offset"][0] == 0
        # the chosen token's log-prob is the best alternative's under greedy decoding
        assert all(
            math.isclose(max(t.values()), v, abs_tol=1e-5)
            for t, v in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True)
        )
    shown = sum(len(ch["logprobs"]["tokens"]) for ch in out["choices"])
    assert shown <= out["usage"]["completion_tokens"] <= shown + 2  # + an EOS per choice, counted but not shown
    # n samples with a seed: reproducible, and each choice has its own seed
    body = {"model": "run", "prompt": "Fever is", "max_tokens": 8, "temperature": 1.0, "seed": 3, "n": 3}
    a, b = (c.post("/v1/completions", json=body).json() for _ in range(2))
    assert [ch["text"] for ch in a["choices"]] == [ch["text"] for ch in b["choices"]]
    assert len({ch["text"] for ch in a["choices"]}) > 1
    assert (
        a["usage"]["prompt_tokens"] == c.post("/v1/completions", json={**body, "n": 1}).json()["usage"]["prompt_tokens"]
    )
    # echo without scoring prepends the prompt; streaming gives the same text
    plain = c.post("/v1/completions", json={"model": "run", "prompt": "Fever is", "max_tokens": 6, "temperature": 0})
    echo = c.post(
        "/v1/completions", json={"model": "run", "prompt": "Fever is", "max_tokens": 6, "temperature": 0, "echo": True}
    )
    assert echo.json()["choices"][0]["text"] == "Fever is" + plain.json()["choices"][0]["text"]
    with c.stream(
        "POST",
        "/v1/completions",
        json={"model": "run", "prompt": "Fever is", "max_tokens": 6, "temperature": 0, "stream": True},
    ) as r:
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    streamed = "".join(json.loads(x[6:])["choices"][0]["text"] for x in lines[:-1] if json.loads(x[6:])["choices"])
    assert streamed == plain.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),  # scoring needs echo
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": -1}, "logprobs"),
        ({"prompt": "x", "logprobs": 1, "stream": True}, "logprobs"),
        ({"prompt": "x", "logprobs": 0, "stream": True}, "logprobs"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a"] * 17}, "prompt"),
        ({"prompt": "x", "max_tokens": -2}, "max_tokens"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": [1, 2]}, None),
    ],
)
def test_completions_bad_requests(engine_and_ref, body, param):
    engine, _ = engine_and_ref
    c = TestClient(create_app(engine))
    r = c.post("/v1/completions", json={"model": "run", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"] and (param is None or err["param"] == param)
    assert c.post("/v1/completions", json={"model": "run", "prompt": "ok", "max_tokens": 2}).status_code == 200


def test_metrics_and_cors(engine_and_ref):
    engine, _ = engine_and_ref
    c = TestClient(create_app(engine, api_key="k"))
    h = {"Authorization": "Bearer k"}
    assert (
        c.post(
            "/v1/chat/completions",
            json={"model": "run", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
            headers=h,
        ).status_code
        == 200
    )
    assert c.post("/v1/chat/completions", json={"model": "nope", "messages": []}, headers=h).status_code in (400, 404)
    assert c.get("/metrics").status_code == 401  # behind the key like every API route
    text = c.get("/metrics", headers=h).text
    assert 'domain_expert_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'route="/v1/chat/completions",status="404"' in text or 'status="400"' in text
    gen = [line for line in text.splitlines() if line.startswith('domain_expert_generation_tokens_total{model="run"}')]
    assert gen and float(gen[0].split()[-1]) >= 1
    assert "domain_expert_queue_depth 0.0" in text and "domain_expert_time_to_first_token_seconds_count" in text
    assert "domain_expert_decode_batch_size_bucket" in text
    # CORS: off by default, on for the configured origin only
    pre = {"Origin": "http://tool.local", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in c.options("/v1/chat/completions", headers=pre).headers
    c2 = TestClient(create_app(engine, cors_origins=["http://tool.local"]))
    r = c2.options("/v1/chat/completions", headers=pre)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://tool.local"
    r = c2.options("/v1/chat/completions", headers={**pre, "Origin": "http://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "http://evil.example"


def test_vllm_engine_missing_is_a_clear_error(tiny_tuned):
    pytest.importorskip("fastapi")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    from domain_expert.errors import DomainExpertError
    from domain_expert.serve import serve

    with pytest.raises(DomainExpertError) as e:
        serve(tiny_tuned, engine="vllm")
    assert "pip install vllm" in e.value.one_line()


def test_loop_mailbox_delivers_in_order_once_flushed_and_refuses_after_close():
    """Events put from the worker thread reach their queues only at `flush`, in order, in one delivery; after the
    loop closes `put` raises (the scheduler then cancels the sequence) and `flush` does not."""
    import threading

    from domain_expert.serve.engine import LoopMailbox

    async def scenario():
        box = LoopMailbox(asyncio.get_running_loop())
        qa, qb = asyncio.Queue(), asyncio.Queue()

        def worker():
            for i in range(5):
                box.put(qa if i % 2 == 0 else qb, i)

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        await asyncio.sleep(0.01)
        assert qa.empty() and qb.empty()  # queued, not delivered: delivery is one wake-up per flush
        threading.Thread(target=box.flush).start()
        got_a = [await asyncio.wait_for(qa.get(), 2) for _ in range(3)]
        got_b = [await asyncio.wait_for(qb.get(), 2) for _ in range(2)]
        box.flush()  # nothing queued: a no-op
        box.put(qa, "late")  # queued while the loop runs, flushed after it closed
        return box, got_a, got_b

    loop = asyncio.new_event_loop()
    box, got_a, got_b = loop.run_until_complete(scenario())
    assert got_a == [0, 2, 4] and got_b == [1, 3]
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        box.put(asyncio.Queue(), 9)
    box.flush()  # must not raise with the loop gone (the late event's sequence is cancelled by the scheduler)
