"""Typed configs. YAML files mirror the classes in `schema`; `loading` reads a shipped name or a file, applies
`key=value` overrides and validates everything before any model is loaded, reporting all problems at once (unknown
keys name the closest valid ones)."""

from domain_expert.config.loading import (
    apply_override,
    config_differences,
    dump_config,
    load_config,
    resolve_config_path,
    shipped_configs,
)
from domain_expert.config.schema import (
    DEFAULT_MODEL,
    HEMATOLOGY_BRANCH,
    PHI_ENTITIES,
    DataConfig,
    DedupConfig,
    DocumentsSource,
    EvalConfig,
    ExportConfig,
    FileSource,
    HubSource,
    HygieneConfig,
    JudgeConfig,
    LeakageConfig,
    LoraConfig,
    MedicalTermsSource,
    OncorefSource,
    ProbesConfig,
    PromptConfig,
    PubmedSource,
    RunConfig,
    ScrubConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_MODEL", "HEMATOLOGY_BRANCH", "DataConfig", "DocumentsSource", "EvalConfig", "ExportConfig", "FileSource",
    "HubSource", "JudgeConfig", "LoraConfig", "MedicalTermsSource", "OncorefSource", "ProbesConfig", "PromptConfig",
    "PubmedSource", "RunConfig", "PHI_ENTITIES", "DedupConfig", "HygieneConfig", "LeakageConfig", "ScrubConfig",
    "TrainConfig",
    "apply_override", "config_differences", "dump_config", "load_config", "resolve_config_path", "shipped_configs",
]  # fmt: skip
