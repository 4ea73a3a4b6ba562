"""`serve --engine llamacpp`: llama.cpp's llama-server as a managed child behind our API.

Always run (no llama.cpp needed): the GGUF LoRA writer against the PEFT tensors (names, shapes, alpha, llama.cpp's
q/k row permutation), the refusals (missing or too old binary, seq2seq, DoRA). With a llama-server found
(DOMAIN_EXPERT_LLAMA_SERVER, `make llamacpp`'s .cache/llama.cpp, or PATH; CI does not build it, so these skip
there): the API through the official openai client, tuned vs base, greedy answers and first-token log-probs against
the transformers engine per precision, echo scoring refused, the child killed mid-request (503, then recovery), and
no llama-server left behind after shutdown or a `kill -9` of the server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from domain_expert.errors import ExportError
from domain_expert.serve.app import create_app
from domain_expert.serve.llamacpp_setup import LlamaCppUnavailableError, find_llama_server

KEY = "test-key"
QUESTIONS = ["What is anemia?", "Define neutropenia.", "What does a platelet do?"]
# max |top-5 log-prob difference| vs our model in fp32, per llama.cpp precision (measured on the tiny model: see
# docs/serving.md; the bounds leave room for other CPUs' kernels)
LOGPROB_TOLERANCE = {"f32": 1e-3, "bf16": 0.25, "q8_0": 0.25}


def _llama_server() -> Path | None:
    try:
        return find_llama_server()
    except LlamaCppUnavailableError:
        return None


needs_llama = pytest.mark.skipif(
    _llama_server() is None,
    reason="no llama-server (run `make llamacpp` or set DOMAIN_EXPERT_LLAMA_SERVER); CI does not build llama.cpp",
)


@pytest.fixture(scope="module")
def strong_run(tiny_tuned, tmp_path_factory) -> Path:
    """The tiny tuned run with its LoRA B factors scaled up, so tuned and base answer differently."""
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("llamacpp") / "run"
    shutil.copytree(tiny_tuned, run, ignore=shutil.ignore_patterns("serve-llamacpp", "checkpoints", "tb"))
    f = run / "finetune" / "adapter_model.safetensors"
    tensors = load_file(f)
    save_file({k: v * 40 if "lora_B" in k else v for k, v in tensors.items()}, f)
    # stage.json records where the adapter lives: point it at the copy
    stage = json.loads((run / "finetune" / "stage.json").read_text())
    text = json.dumps(stage).replace(str(tiny_tuned), str(run))
    (run / "finetune" / "stage.json").write_text(text)
    assert torch.count_nonzero(load_file(f)[next(k for k in tensors if "lora_B" in k)]) > 0
    return run


# --- without llama.cpp ------------------------------------------------------------------------------------------


def test_lora_gguf_matches_the_peft_adapter(tiny_tuned, tmp_path):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from domain_expert.export.gguf_lora import write_lora_gguf
    from domain_expert.export.gguf_writer import _permute

    ft = tiny_tuned / "finetune"
    base_cfg = json.loads((Path(json.loads((ft / "stage.json").read_text())["base_model"]["path"]) / "config.json")
                          .read_text())  # fmt: skip
    out = tmp_path / "adapter.gguf"
    info = write_lora_gguf(ft, base_cfg, out)
    peft = load_file(ft / "adapter_model.safetensors")
    acfg = json.loads((ft / "adapter_config.json").read_text())
    r = gguf.GGUFReader(str(out))

    def field(name):
        f = r.fields[name]
        return f.parts[f.data[0]]

    assert bytes(field("general.type")).decode() == "adapter"
    assert bytes(field("general.architecture")).decode() == "llama"
    assert bytes(field("adapter.type")).decode() == "lora"
    assert float(field("adapter.lora.alpha")[0]) == acfg["lora_alpha"] == info["gguf_alpha"]
    tensors = {t.name: np.array(t.data).reshape([int(x) for x in reversed(t.shape)]) for t in r.tensors}
    layers, heads, kv = base_cfg["num_hidden_layers"], base_cfg["num_attention_heads"], base_cfg["num_key_value_heads"]
    assert len(tensors) == 2 * 7 * layers == 2 * info["modules"]
    for hf, name in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("down_proj", "ffn_down")):
        a = peft[f"base_model.model.model.layers.1.{'mlp' if 'down' in hf else 'self_attn'}.{hf}.lora_A.weight"]
        b = peft[f"base_model.model.model.layers.1.{'mlp' if 'down' in hf else 'self_attn'}.{hf}.lora_B.weight"]
        ga, gb = tensors[f"blk.1.{name}.weight.lora_a"], tensors[f"blk.1.{name}.weight.lora_b"]
        assert ga.shape == (acfg["r"], a.shape[1]) and gb.shape == (b.shape[0], acfg["r"])
        np.testing.assert_array_equal(ga, a)
        # the written delta is the base GGUF's row order of the PEFT delta: the permutation the base weights get
        delta = b @ a
        want = {"q_proj": _permute(delta, heads, heads), "k_proj": _permute(delta, heads, kv)}.get(hf, delta)
        np.testing.assert_allclose(gb @ ga, want, rtol=1e-6, atol=1e-7)
        if hf in ("q_proj", "k_proj"):
            assert not np.allclose(gb, b)  # the permutation really moved rows (the test would catch dropping it)


def test_lora_settings_refuse_what_llama_cpp_cannot_apply(tiny_tuned, tmp_path):
    from domain_expert.export.gguf_lora import lora_settings

    ft = tmp_path / "ft"
    shutil.copytree(tiny_tuned / "finetune", ft, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    cfg = json.loads((ft / "adapter_config.json").read_text())
    (ft / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))
    s = lora_settings(ft)
    assert s["scaling"] == pytest.approx(cfg["lora_alpha"] / cfg["r"] ** 0.5)  # rsLoRA's scale, kept exactly
    (ft / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ExportError, match="DoRA"):
        lora_settings(ft)


def test_missing_binary_names_make_llamacpp(monkeypatch, tmp_path):
    from domain_expert.serve import llamacpp_setup

    monkeypatch.delenv(llamacpp_setup.LLAMA_SERVER_ENV, raising=False)
    monkeypatch.setattr(llamacpp_setup, "BUILD_SUBPATH", Path("no/such/llama-server"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LlamaCppUnavailableError, match="make llamacpp") as e:
        find_llama_server()
    assert "8 minutes" in str(e.value)
    monkeypatch.setenv(llamacpp_setup.LLAMA_SERVER_ENV, str(tmp_path / "nope"))
    with pytest.raises(LlamaCppUnavailableError, match="no executable llama-server"):
        find_llama_server()


def test_too_old_binary_is_refused(tmp_path):
    from domain_expert.serve.llamacpp_setup import inspect_llama_server

    old = tmp_path / "llama-server"
    old.write_text("#!/bin/sh\necho 'version: 3000 (deadbee)' >&2\necho '--lora FNAME  -np, --parallel N'\n")
    old.chmod(0o755)
    with pytest.raises(LlamaCppUnavailableError, match="too old.*lora-init-without-apply"):
        inspect_llama_server(old)


def test_seq2seq_is_refused_by_name(tiny_t5_dir):
    from domain_expert.errors import ConfigError
    from domain_expert.models.reference import resolve_run
    from domain_expert.serve import _seq2seq_engine
    from domain_expert.serve.llamacpp_setup import prepare_weights

    with pytest.raises(ExportError, match="encoder-decoder"):
        prepare_weights(resolve_run(tiny_t5_dir), "f32")
    with pytest.raises(ConfigError, match="--engine llamacpp"):
        _seq2seq_engine(tiny_t5_dir, "t5", "llamacpp", "auto", False, "cpu", "fp32", 4, 4)


# --- with llama-server ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(strong_run):
    if _llama_server() is None:
        pytest.skip("no llama-server")
    from domain_expert.serve.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine.from_run(strong_run, "run", precision="f32", max_batch=4, max_queue=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(strong_run):
    """Our transformers engine on the same run, fp32: the answers llama.cpp must reproduce."""
    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve.engine import TransformersEngine

    engine = TransformersEngine(load_for_inference(strong_run, device="cpu", dtype="fp32"), "run", max_queue=8)
    yield TestClient(create_app(engine))
    engine.close()


def _chat(client, model: str, question: str, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0}
    r = client.post("/v1/chat/completions", json={**body, **extra}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def _tops(choice) -> list[dict[str, float] | None]:
    """Each generated token's top log-probs; None where llama-server sent none (a token it held back because it
    ends in an incomplete UTF-8 character: the tiny random model emits many lone bytes)."""
    return [
        None if t["logprob"] is None else {x["token"]: x["logprob"] for x in t["top_logprobs"]}
        for t in choice["logprobs"]["content"]
    ]


def _max_diff(got: list, ours: list) -> tuple[float, int]:
    """(max |log-prob difference| over the top tokens both list, positions compared)."""
    diffs = [abs(g[t] - o[t]) for g, o in zip(got, ours, strict=True) if g is not None for t in g if t in o]
    return max(diffs, default=0.0), sum(g is not None for g in got)


@needs_llama
def test_openai_client_models_stream_auth_and_limits(llama):
    import openai

    assert llama.model_ids() == ["run", "run:base"]
    with TestClient(create_app(llama, api_key=KEY)) as tc:
        health = tc.get("/health").json()
        assert health["status"] == "ok" and health["engine"] == "llamacpp" and health["precision"] == "f32"
        assert health["llama_server"].endswith("llama-server") and health["llama_server_version"] != "unknown"
        assert tc.get("/ping").status_code == 200 and tc.get("/v1/models").status_code == 401
        oc = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=tc, max_retries=0)
        assert [m.id for m in oc.models.list()] == ["run", "run:base"]
        msgs = [{"role": "user", "content": QUESTIONS[0]}]
        whole = oc.chat.completions.create(model="run", messages=msgs, max_tokens=8, temperature=0)
        chunks = list(oc.chat.completions.create(model="run", messages=msgs, max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
        )
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        text = oc.completions.create(model="run:base", prompt="Anemia is", max_tokens=4, temperature=0)
        assert text.usage.completion_tokens >= 1
        with pytest.raises(openai.BadRequestError, match="cannot score prompts"):
            oc.completions.create(model="run", prompt="Anemia is", max_tokens=0, echo=True, logprobs=1)
        with pytest.raises(openai.BadRequestError, match="limit of 2048"):
            oc.chat.completions.create(model="run", messages=msgs, max_tokens=5000)
        with pytest.raises(openai.NotFoundError):
            oc.chat.completions.create(model="other", messages=msgs)
        bad = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=tc, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        auth = {"Authorization": f"Bearer {KEY}"}
        assert b"domain_expert" in tc.get("/metrics", headers=auth).content
        r = tc.post("/invocations", json={"model": "run:base", "messages": msgs, "max_tokens": 3}, headers=auth)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert tc.get("/").status_code == 200  # the chat page


@needs_llama
def test_tuned_and_base_match_the_transformers_engine(llama, reference):
    """Greedy answers token for token, and first-token top-5 log-probs, for both models (f32: same arithmetic)."""
    client = TestClient(create_app(llama, api_key=KEY))
    diffs, compared, answers = [], 0, {}
    for q in QUESTIONS:
        for model in ("run", "run:base"):
            ours = _chat(reference, model, q, logprobs=True, top_logprobs=5)
            got = _chat(client, model, q, logprobs=True, top_logprobs=5)
            assert got["message"]["content"] == ours["message"]["content"], (model, q)
            assert [t["token"] for t in got["logprobs"]["content"]] == [t["token"] for t in ours["logprobs"]["content"]]
            diff, n = _max_diff(_tops(got), _tops(ours))
            diffs.append(diff)
            compared += n
            answers[model, q] = got["message"]["content"]
    print(f"f32: max |top-5 logprob diff| {max(diffs):.3g} over {compared} positions")
    assert compared >= 10 and max(diffs) < LOGPROB_TOLERANCE["f32"], diffs
    # the adapter is applied for `run` and not for `run:base`
    assert any(answers["run", q] != answers["run:base", q] for q in QUESTIONS)


@needs_llama
@pytest.mark.parametrize("precision", ["bf16", "q8_0"])
def test_lower_precisions_stay_close(strong_run, reference, precision):
    from domain_expert.serve.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine.from_run(strong_run, "run", precision=precision, max_batch=2)
    try:
        client = TestClient(create_app(engine))
        diffs, same = [], 0
        for q in QUESTIONS:
            for model in ("run", "run:base"):
                ours = _chat(reference, model, q, max_tokens=1, logprobs=True, top_logprobs=5)
                got = _chat(client, model, q, max_tokens=1, logprobs=True, top_logprobs=5)
                same += got["message"]["content"] == ours["message"]["content"]
                if _tops(got)[0] is not None:  # a first token that is a lone byte comes without log-probs
                    diffs.append(_max_diff(_tops(got), _tops(ours))[0])
        print(f"{precision}: max |first-token top-5 logprob diff| {max(diffs):.3g}, same first token {same}/6")
        assert diffs and max(diffs) < LOGPROB_TOLERANCE[precision]
    finally:
        engine.close()
    assert (strong_run / "serve-llamacpp" / precision / "model.gguf").exists()


@needs_llama
def test_second_start_reuses_the_converted_files(strong_run, llama):
    from domain_expert.models.reference import resolve_run
    from domain_expert.serve.llamacpp_setup import prepare_weights

    t0 = time.time()
    w = prepare_weights(resolve_run(strong_run), "f32")
    assert w.reused and w.adapter is not None and time.time() - t0 < 5


@needs_llama
def test_child_killed_mid_stream_gives_503_then_recovers(llama):
    client = TestClient(create_app(llama))
    pid = llama.process.pid
    body = {"model": "run", "messages": [{"role": "user", "content": "What is anemia?"}], "max_tokens": 400,
            "temperature": 0, "stream": True}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(x for x in lines if x.startswith("data: "))  # the stream has started
        os.kill(pid, signal.SIGKILL)
        rest = [x for x in lines if x.startswith("data: ")]
    errors = [json.loads(x[6:])["error"] for x in rest if '"error"' in x]
    assert rest[-1] == "data: [DONE]" and errors and errors[0]["code"] == "engine_unavailable"
    # a request while it restarts waits for it (or gets a 503); once back, answers again
    deadline = time.time() + 60
    while not llama.ready and time.time() < deadline:
        time.sleep(0.1)
    assert llama.ready and llama.process.pid != pid and llama.process.starts == 2
    assert _chat(client, "run", "What is anemia?")["message"]["content"] is not None
    assert client.get("/health").json()["llama_server_starts"] == 2


@needs_llama
def test_no_llama_server_left_after_kill_9_of_the_server(strong_run, tmp_path):
    """The CLI server is killed without any cleanup: its llama-server child must go too (PR_SET_PDEATHSIG)."""
    import httpx

    from domain_expert.serve.llamacpp_process import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "domain_expert", "serve", str(strong_run), "--engine", "llamacpp", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        deadline, health = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert health and health["engine"] == "llamacpp", health
        child = health["llama_server_pid"]
        os.kill(child, 0)  # alive
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.time() + 10
        while time.time() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "llama-server outlived the server"
    finally:
        if proc.poll() is None:
            proc.kill()
        if child is not None and _alive(child):  # the test failed: do not leave the orphan running
            os.kill(child, signal.SIGKILL)


@needs_llama
def test_close_stops_the_child(strong_run):
    from domain_expert.serve.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine.from_run(strong_run, "run", precision="f32", max_batch=1)
    pid = engine.process.pid
    assert _alive(pid)
    engine.close()
    assert not _alive(pid) and not engine.ready


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
