"""Command line: parses and dispatches, one verb per stage. Heavy imports live inside the stages so --help is fast.

Library code raises DomainExpertError; only here does it become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from domain_expert import __version__
from domain_expert.errors import DomainExpertError

CONFIG_HELP = "a YAML config or a shipped config name (default: medical-terms), then key=value overrides"


def _split_config(items: list[str]) -> tuple[str | None, list[str]]:
    config, overrides = None, []
    for it in items:
        if "=" in it:
            overrides.append(it)
        elif config is None:
            config = it
        else:
            raise DomainExpertError(
                f"unexpected argument '{it}'", where="command line", fix="give one config, then key=value overrides"
            )
    return config, overrides


def _load(args) -> object:
    from domain_expert.config import load_config

    config, overrides = _split_config(args.config)
    return load_config(config or "medical-terms", overrides)


def cmd_prepare(args) -> int:
    from domain_expert.data import prepare

    cfg = _load(args)
    out = prepare.run(cfg, args.out or cfg.run_dir / "data", overwrite=args.overwrite)
    print(f"[domain-expert] prepared data in {out}")
    return 0


def cmd_finetune(args) -> int:
    from domain_expert import finetune

    cfg = _load(args)
    out = args.out or cfg.run_dir / "finetune"
    finetune.run(cfg, args.data or cfg.run_dir / "data", out, overwrite=args.overwrite, resume=args.resume)
    return 0


def cmd_export(args) -> int:
    from domain_expert.export import export_target

    opts = {"dtype": args.dtype, "overwrite": args.overwrite}
    if args.target == "bedrock":
        opts["dtype"] = args.dtype or "bf16"
    if args.target == "gguf":
        opts.update(gguf_type=args.gguf_type, llama_cpp=args.llama_cpp)
    export_target(args.run, args.target, args.out, **opts)
    return 0


def cmd_generate(args) -> int:
    from domain_expert.generate import generate_batch
    from domain_expert.models.loader import load_for_inference

    lm = load_for_inference(args.run, base=args.base)
    answer = generate_batch(lm, [args.question], base=args.base, max_new_tokens=args.max_new_tokens)[0]
    print(answer or "(empty answer: the model stopped at once)")
    return 0


def cmd_chat(args) -> int:
    from domain_expert.generate import chat_loop
    from domain_expert.models.loader import load_for_inference

    lm = load_for_inference(args.run, base=args.base)
    chat_loop(lm, base=args.base, max_new_tokens=args.max_new_tokens)
    return 0


def cmd_evaluate(args) -> int:
    from domain_expert import evaluate

    out = evaluate.run(args.run, args.model or None, overrides=args.overrides, out_dir=args.out,
                       overwrite=args.overwrite)  # fmt: skip
    from domain_expert.summary import print_verdicts

    print_verdicts(out / "metrics.json")
    return 0


def cmd_report(args) -> int:
    from domain_expert import report

    out = report.run(args.run, args.out)
    print(f"[domain-expert] report: {out / 'report.html'} (also report.md, metrics.json)")
    return 0


def cmd_serve(args) -> int:
    import os

    from domain_expert.serve import serve

    # the key comes from the flag or the environment; prefer the environment (flags end up in shell history)
    api_key = args.api_key or os.environ.get("DOMAIN_EXPERT_API_KEY") or None
    print(f"[domain-expert] serving {args.run} on http://{args.host}:{args.port}/v1 (OpenAI-compatible)"
          + (" with API key" if api_key else ""), flush=True)  # fmt: skip
    if args.compile:
        print("[domain-expert] --compile: compiling the decoding step before serving (2-3 minutes on a 2-core CPU)",
              flush=True)  # fmt: skip
    serve(
        args.run,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        cors_origins=args.cors_origin,
        engine=args.engine,
        decoder=args.decoder,
        compile=args.compile,
        name=args.name,
        llamacpp_precision=args.llamacpp_precision,
        llama_server=args.llama_server,
    )
    return 0


def cmd_run(args) -> int:
    from domain_expert import pipeline

    pipeline.run(_load(args), overwrite=args.overwrite, resume=args.resume)
    return 0


def cmd_configs(args) -> int:
    from domain_expert.config import shipped_configs

    configs = shipped_configs()
    width = max(map(len, configs), default=0)  # one column whatever the longest name
    for name, path in configs.items():
        print(f"{name:{width}} {path}")
    return 0


def cmd_init(args) -> int:
    from domain_expert.init import _slug, init

    src = Path(args.path)
    out = args.out or Path(f"{args.name or _slug(src.stem if src.is_file() else src.resolve().name)}.yaml")
    kw = {"model": args.model} if args.model else {}
    path = init(src, out, name=args.name, force=args.force, **kw)
    print(f"[domain-expert] wrote {path}: check the guesses in its comments, then `domain-expert run {path}`")
    return 0


def _init_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("path", help="a folder of documents (.txt/.md/.html/.pdf, CSV/JSONL/Parquet tables) or one table")
    sp.add_argument("--out", type=Path, help="config file to write (default: <name>.yaml here)")
    sp.add_argument("--name", help="run name (default: from the folder or file name)")
    sp.add_argument("--model", help="base model (default: smollm2-135m-instruct)")
    sp.add_argument("--force", action="store_true", help="replace an existing config file")


def cmd_aws(args) -> int:
    return args.aws_func(args)


def _aws_args(sp: argparse.ArgumentParser) -> None:
    from domain_expert.aws.cli import add_arguments

    add_arguments(sp)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="domain-expert",
        description="Turn a foundation LLM into a domain expert: prepare -> finetune -> export -> chat.",
    )
    p.add_argument("--version", action="version", version=f"domain-expert {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, help_, fn, add_args in VERBS:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        add_args(sp)
    return p


def _config_args(sp: argparse.ArgumentParser, *, resume: bool) -> None:
    sp.add_argument("config", nargs="*", metavar="CONFIG [key=value ...]", help=CONFIG_HELP)
    fresh = sp.add_mutually_exclusive_group()
    fresh.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    if resume:
        fresh.add_argument(
            "--resume",
            action="store_true",
            help="continue an interrupted run from its last complete checkpoint (same config and data)",
        )


def _run_args(sp: argparse.ArgumentParser) -> None:
    _config_args(sp, resume=True)


def _prepare_args(sp: argparse.ArgumentParser) -> None:
    _config_args(sp, resume=False)
    sp.add_argument("--out", type=Path, help="output folder (default: <run>/data)")


def _finetune_args(sp: argparse.ArgumentParser) -> None:
    _config_args(sp, resume=True)
    sp.add_argument("--data", type=Path, help="prepared data folder (default: <run>/data)")
    sp.add_argument("--out", type=Path, help="output folder (default: <run>/finetune)")


def _export_args(sp: argparse.ArgumentParser) -> None:
    from domain_expert.export.gguf_writer import GGUF_TYPES
    from domain_expert.export.targets import TARGETS

    sp.add_argument("run", type=Path, help="run folder or its finetune/ folder (other targets: also export/ or a model"
                    " folder)")  # fmt: skip
    sp.add_argument(
        "--target",
        choices=TARGETS,
        default="hf",
        help="hf: merged Hugging Face folder (default); bedrock: Custom Model Import folder + validation; sagemaker:"
        " model.tar.gz for deploy/sagemaker's image; gguf: GGUF + Ollama Modelfile (docs/deploy.md)",
    )
    sp.add_argument("--out", type=Path, help="output folder (default: <run>/export, or <run>/export-<target>)")
    sp.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                    help="weights dtype (hf: default from config; bedrock: default bf16)")  # fmt: skip
    sp.add_argument("--gguf-type", choices=GGUF_TYPES, default="q8_0",
                    help="gguf target's precision (default q8_0)")  # fmt: skip
    sp.add_argument("--llama-cpp", type=Path, metavar="PATH",
                    help="gguf target: convert with llama.cpp's convert_hf_to_gguf.py from this source tree (or set"
                    " DOMAIN_EXPERT_LLAMA_CPP); default: the built-in Llama-family writer")  # fmt: skip
    sp.add_argument("--overwrite", action="store_true")


def _evaluate_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("run", type=Path, help="run folder")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="evaluate.* settings, e.g. max_items=50")
    sp.add_argument(
        "--model",
        action="append",
        help="model to compare (repeatable; first is the baseline): RUN, RUN:base, a model folder, "
        "or URL#name for an OpenAI-compatible endpoint; label=SPEC names it. Default: RUN:base and RUN",
    )
    sp.add_argument("--out", type=Path, help="output folder (default: <run>/eval)")
    sp.add_argument("--overwrite", action="store_true", help="discard an earlier evaluation instead of resuming")


def _report_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("run", type=Path, help="run folder with an eval/ folder")
    sp.add_argument("--out", type=Path, help="output folder (default: <run>/report)")


def _serve_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("run", type=Path, help="run folder, its finetune/ or export/ folder, or a model folder")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=_int_at_least(0, 65535), default=8000)
    sp.add_argument("--name", help="served model id (default: the run folder's name)")
    sp.add_argument("--api-key", help="require Authorization: Bearer KEY (or set DOMAIN_EXPERT_API_KEY)")
    sp.add_argument("--max-queue", type=_int_at_least(0), default=32, help="waiting requests beyond this get HTTP 429")
    sp.add_argument("--max-batch", type=_int_at_least(1), default=32, help="requests generated together (batch rows)")
    sp.add_argument(
        "--decoder",
        choices=["auto", "lean", "transformers"],
        default="auto",
        help="transformers engine's forward pass: lean (fewer operations, Llama-style models; others fall "
        "back), the transformers model's own, or auto (default: lean on CPU, transformers on GPU)",
    )
    sp.add_argument(
        "--compile",
        action="store_true",
        help="compile the lean decoder's decoding step (torch.compile, frozen weights) at start-up: faster "
        "steps after 2-3 minutes of compiling (2-core CPU), one more copy of the weights (docs/serving.md)",
    )
    sp.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN to call the API (repeatable; off by default)",
    )
    sp.add_argument(
        "--engine",
        choices=["transformers", "vllm", "llamacpp"],
        default="transformers",
        help="transformers (default, CPU or GPU), vllm (GPU, needs `pip install vllm`) or llamacpp (llama.cpp's "
        "llama-server as a child process: `make llamacpp`; docs/serving.md)",
    )
    sp.add_argument(
        "--llamacpp-precision",
        choices=["f32", "bf16", "q8_0"],
        default="f32",
        help="--engine llamacpp: the base weights' GGUF type (default f32: the same answers as our model; q8_0 is "
        "faster and approximate); the adapter is always f32",
    )
    sp.add_argument(
        "--llama-server",
        metavar="PATH",
        help="--engine llamacpp: the llama-server binary (default: DOMAIN_EXPERT_LLAMA_SERVER, then "
        ".cache/llama.cpp/build/bin/llama-server, then PATH)",
    )


def _ask_args(sp: argparse.ArgumentParser, *, question: bool) -> None:
    sp.add_argument("run", type=Path, help="run folder, its finetune/ or export/ folder, or a model folder")
    if question:
        sp.add_argument("question")
    sp.add_argument("--base", action="store_true", help="ask the untuned base model, same prompt format")
    sp.add_argument("--max-new-tokens", type=int, default=128 if question else 256)


# the one registry of verbs: name, help, handler, arguments
VERBS: list[tuple[str, str, Callable, Callable[[argparse.ArgumentParser], None]]] = [
    ("run", "the whole pipeline on a config, then base vs tuned side by side", cmd_run, _run_args),
    ("prepare", "sources -> train/val/test JSONL + manifest.json", cmd_prepare, _prepare_args),
    ("finetune", "LoRA fine-tuning on prepared data", cmd_finetune, _finetune_args),
    ("export", "merge the adapter into a plain Hugging Face folder, or build a deploy target (--target)", cmd_export,
     _export_args),
    ("evaluate", "compare base vs tuned (or any models) on held-out items, with statistics", cmd_evaluate,
     _evaluate_args),
    ("report", "write report.html / report.md from a run's files (no model loaded)", cmd_report, _report_args),
    ("serve", "OpenAI-compatible server for the tuned model and its base (<name>:base)", cmd_serve, _serve_args),
    ("generate", "answer one question with the tuned (or --base) model", cmd_generate,
     lambda sp: _ask_args(sp, question=True)),
    ("chat", "chat in the terminal with the tuned (or --base) model", cmd_chat,
     lambda sp: _ask_args(sp, question=False)),
    ("configs", "list the shipped configs", cmd_configs, lambda sp: None),
    ("init", "write a starter config for your own folder of documents or Q&A table", cmd_init, _init_args),
    ("aws", "S3 upload, SageMaker training and endpoints, Bedrock import (needs the aws extra)", cmd_aws, _aws_args),
]  # fmt: skip


def _int_at_least(low: int, high: int | None = None):
    """argparse type: an integer in [low, high], with a message that says the allowed range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: use {low}..{high}"
                if high is not None
                else f"{value} is too small: use {low} or more"
            )
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DomainExpertError as e:
        rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else "0"
        # under torchrun every rank reports: name the others, so a repeated line is not mistaken for two errors
        print(f"{f'rank {rank}: ' if rank != '0' else ''}error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    sys.exit(main())
