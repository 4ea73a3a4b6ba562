"""`domain-expert serve`: an OpenAI-compatible HTTP server over a run folder (tuned model and, for a LoRA run, its
base as `<name>:base`). Binds 127.0.0.1 unless told otherwise: put it behind a proxy and set an API key before
exposing it."""

from __future__ import annotations

from pathlib import Path

from domain_expert.serve.app import create_app
from domain_expert.serve.engine import Engine, GenerationRequest, GenerationResult, TransformersEngine
from domain_expert.serve.schemas import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_TOKENS_LIMIT

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "TransformersEngine", "create_app", "serve", "model_name"]


def model_name(run_path: str | Path) -> str:
    """The served model id: the run folder's name (runs/<name>, or <name> when given its finetune/ or export/)."""
    path = Path(run_path).resolve()
    return path.parent.name if path.name in ("finetune", "export") else path.name


def serve(
    run_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    *,
    name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_queue: int = 32,
    max_batch: int = 32,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    cors_origins: list[str] | None = None,
    engine: str = "transformers",
    decoder: str = "auto",
    compile: bool = False,
    llamacpp_precision: str = "f32",
    llama_server: str | Path | None = None,
) -> None:
    import uvicorn

    served = name or model_name(run_path)
    if _kind(run_path) == "seq2seq":
        eng = _seq2seq_engine(run_path, served, engine, decoder, compile, device, dtype, max_queue, max_batch)
    elif engine == "vllm":
        from domain_expert.serve.vllm_engine import VLLMEngine

        eng = VLLMEngine.from_run(run_path, served, max_queue=max_queue, max_batch=max_batch)
    elif engine == "llamacpp":
        from domain_expert.serve.llamacpp_engine import LlamaCppEngine

        _refuse_for_llamacpp(decoder, compile)
        eng = LlamaCppEngine.from_run(run_path, served, precision=llamacpp_precision, llama_server=llama_server,
                                      max_queue=max_queue, max_batch=max_batch)  # fmt: skip
    else:
        from domain_expert.models.loader import load_for_inference

        eng = TransformersEngine(  # loaded on the engine's own thread (faster decoding on CPU)
            lambda: load_for_inference(run_path, device=device, dtype=dtype),
            served,
            max_queue=max_queue,
            max_batch=max_batch,
            decoder=decoder,
            compile=compile,
        )
    print(f"[domain-expert] serving path: {eng.serving_path}", flush=True)
    app = create_app(
        eng,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        cors_origins=cors_origins,
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        eng.close()


def _kind(run_path: str | Path) -> str:
    from domain_expert.models.kinds import model_kind
    from domain_expert.models.reference import resolve_run

    return model_kind(resolve_run(run_path).weights.path)


def _seq2seq_engine(run_path, served: str, engine: str, decoder: str, compile: bool, device: str, dtype: str,
                    max_queue: int, max_batch: int):  # fmt: skip
    """An encoder-decoder model's engine; options of the decoder-only engines are refused by name."""
    from domain_expert.errors import ConfigError
    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve.seq2seq_engine import Seq2SeqEngine

    causal_only = {"--engine vllm": engine == "vllm", "--engine llamacpp": engine == "llamacpp",
                   "--decoder": decoder != "auto", "--compile": compile}  # fmt: skip
    for option, asked in causal_only.items():
        if asked:
            raise ConfigError(
                f"{option} applies to decoder-only (causal) models; this is an encoder-decoder (seq2seq) model",
                where=str(run_path),
                fix=f"drop {option.split()[0]}: seq2seq models are served through model.generate",
            )
    lm = load_for_inference(run_path, device=device, dtype=dtype)
    return Seq2SeqEngine(lm, served, max_queue=max_queue, max_batch=max_batch)


def _refuse_for_llamacpp(decoder: str, compile: bool) -> None:
    """--decoder and --compile choose our engine's forward pass; llama.cpp has its own."""
    from domain_expert.errors import ConfigError

    for option, asked in {"--decoder": decoder != "auto", "--compile": compile}.items():
        if asked:
            raise ConfigError(
                f"{option} applies to the transformers engine, not --engine llamacpp",
                where="domain-expert serve",
                fix=f"drop {option}, or drop --engine llamacpp",
            )
