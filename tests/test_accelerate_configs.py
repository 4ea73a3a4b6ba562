"""The shipped accelerate launch configs load with accelerate's own classes and go through `accelerate launch`'s
validation and environment preparation (no GPU needed); the one-GPU QLoRA recipe loads as a run config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "domain_expert"
FOLDER = PKG / "configs" / "accelerate"
NAMES = ["ddp", "deepspeed-zero3", "fsdp", "multi-node"]


def _launch_env(name: str) -> tuple[object, dict[str, str]]:
    """What `accelerate launch --config_file <name>.yaml -m domain_expert finetune` would put in the environment."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = str(FOLDER / f"{name}.yaml")
    args = launch_command_parser().parse_args(["--config_file", path, "-m", "domain_expert", "finetune"])
    _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = list(load_config_from_file(path).deepspeed_config)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_the_four_configs_ship():
    assert sorted(p.stem for p in FOLDER.glob("*.yaml")) == NAMES


def test_package_data_installs_them():
    globs = tomllib.loads((PKG.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    installed = {p for g in globs["domain_expert"] for p in PKG.glob(g)}  # setuptools globs: `*` stays in a folder
    assert set(FOLDER.glob("*.yaml")) <= installed


@pytest.mark.parametrize("name", NAMES)
def test_loads_as_cluster_config_with_known_keys(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    cfg = load_config_from_file(str(FOLDER / f"{name}.yaml"))  # rejects unknown top-level keys
    assert isinstance(cfg, ClusterConfig)
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    assert cfg.num_processes >= 2 and cfg.num_processes % cfg.num_machines == 0
    assert not cfg.use_cpu
    # nested keys are copied onto `accelerate launch` options without a check: a typo would be silently ignored
    options = set(vars(launch_command_parser().parse_args(["x.py"])))
    nested = [k if k.startswith("fsdp") else f"fsdp_{k}" for k in cfg.fsdp_config] + list(cfg.deepspeed_config)
    assert not [k for k in nested if k not in options]


def test_ddp():
    args, _ = _launch_env("ddp")
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    assert args.num_machines == 1 and args.mixed_precision == "no"


def test_fsdp_full_shard_lora_settings():
    from transformers.models.llama import modeling_llama

    args, env = _launch_env("fsdp")
    assert args.use_fsdp
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    assert env["FSDP_RESHARD_AFTER_FORWARD"].upper() == "FULL_SHARD"
    assert env["FSDP_USE_ORIG_PARAMS"] == "true"  # frozen and trainable weights in one wrapped unit
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert hasattr(modeling_llama, env["FSDP_TRANSFORMER_CLS_TO_WRAP"])
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"  # required by cpu_ram_efficient_loading
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_deepspeed_zero3():
    args, env = _launch_env("deepspeed-zero3")
    assert args.use_deepspeed
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"] == "none"


def test_multi_node_two_machines():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(FOLDER / "multi-node.yaml"))
    assert cfg.num_machines == 2 and cfg.num_processes == 16
    assert cfg.main_process_ip and cfg.main_process_port
    args, _ = _launch_env("multi-node")
    assert args.multi_gpu and args.num_machines == 2 and args.machine_rank == 0


def test_qlora_one_gpu_recipe_loads():
    from domain_expert.config import load_config, shipped_configs

    cfg = load_config(shipped_configs()["llama2-7b-qlora"])
    assert cfg.train.quantization == "4bit" and cfg.train.device == "cuda" and cfg.train.dtype == "bf16"
    assert cfg.train.gradient_checkpointing
    assert cfg.model == "meta-llama/Llama-2-7b-hf" and cfg.prompt.style == "plain"  # a base model: no chat template
