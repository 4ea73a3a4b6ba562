"""Loading configs: a shipped name or a YAML file, `key=value` overrides, validation with every problem reported at
once (unknown keys name the closest valid ones), and the differences between two configs (for resume)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from domain_expert.config.schema import (
    DocumentsSource,
    FileSource,
    HubSource,
    MedicalTermsSource,
    OncorefSource,
    PubmedSource,
    RunConfig,
)
from domain_expert.errors import ConfigError


def _valid_keys(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Walk the model tree along `loc` to list the keys valid at that place (for 'did you mean')."""
    cls = model
    for part in loc[:-1]:
        if cls is None:
            return []
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(str(part))
        if field is None:
            return []
        cls = _model_of(field.annotation)
    if cls is None:
        return []
    return list(cls.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _source_class(kind: str) -> type[BaseModel] | None:
    return {
        "medical-terms": MedicalTermsSource,
        "file": FileSource,
        "documents": DocumentsSource,
        "hub": HubSource,
        "pubmed": PubmedSource,
        "oncoref": OncorefSource,
    }.get(kind)


_TAGS = ("medical-terms", "file", "documents", "hub", "pubmed", "oncoref")


def _strip_tags(loc: tuple) -> tuple:
    """Discriminated unions put the tag into loc (data, sources, 0, file, path): drop it for display and lookup."""
    out = []
    for i, p in enumerate(loc):
        if p in _TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue
        out.append(p)
    return tuple(out)


def _format_errors(exc: ValidationError, raw: dict, origin: str) -> str:
    problems = []
    for err in exc.errors():
        loc = _strip_tags(tuple(err["loc"]))
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            parent = _lookup(raw, loc[:-1])
            if loc[:2] == ("data", "sources") and isinstance(parent, dict):
                cls = _source_class(str(parent.get("kind", "medical-terms")))
                valid = list(cls.model_fields) if cls else []
            else:
                valid = _valid_keys(RunConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys here: {', '.join(valid)}"
            problems.append(f"unknown key '{key}' ({hint})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"  # a whole section is noise, not a hint
            problems.append(f"'{key}': {msg}{shown}" if key else f"{msg}")
    return f"{origin}: " + "; ".join(problems)


def _lookup(raw: Any, loc: tuple) -> Any:
    cur = raw
    for part in loc:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return None
    return cur


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a raw config dict, creating levels as needed."""
    if "=" not in assignment:
        raise ConfigError(
            f"override '{assignment}' is not key=value", where="command line", fix="write e.g. train.epochs=2"
        )
    key, value = assignment.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    parts = key.strip().split(".")
    cur: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt_is_index = parts[i + 1].isdigit()
        if isinstance(cur, list):
            if int(part) >= len(cur):
                raise ConfigError(f"index {part} out of range in override '{key}'", where="command line")
            cur = cur[int(part)]
            continue
        if part not in cur or cur[part] is None:
            cur[part] = [] if nxt_is_index else {}
        cur = cur[part]
    last = parts[-1]
    if isinstance(cur, list):
        idx = int(last)
        if idx >= len(cur):  # only existing items can be overridden
            raise ConfigError(f"index {idx} out of range in override '{key}'", where="command line")
        cur[idx] = parsed
    else:
        cur[last] = parsed


def _deep_merge(base: dict, top: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) in `top` replaces what `base` had."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults), apply `key=value` overrides, validate everything at once."""
    raw: dict = {}
    origin = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"not valid YAML ({getattr(e, 'problem', e)})", where=where) from None
        except UnicodeDecodeError:
            raise ConfigError("config is not UTF-8 text", where=str(path), fix="save it as UTF-8") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("config must be a mapping of keys to values", where=str(path))
        raw = loaded
    # Overrides apply on top of the defaults, so `data.sources.0.branch=...` works without a file.
    raw = _deep_merge(RunConfig().model_dump(mode="json"), raw)
    for ov in overrides or []:
        apply_override(raw, ov)
    if overrides:
        origin += " + overrides"
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(
            _format_errors(e, raw, origin), fix="see the shipped configs in domain_expert/configs"
        ) from None


def shipped_configs() -> dict[str, Path]:
    folder = Path(__file__).parent.parent / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_config_path(path: str | Path) -> Path:
    """A config is a file path or the name of a shipped config (e.g. `medical-terms`)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = shipped_configs()
    if str(path) in shipped:
        return shipped[str(path)]
    close = difflib.get_close_matches(str(path), list(shipped), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"shipped configs: {', '.join(shipped)}"
    raise ConfigError("config file not found", where=str(path), fix=hint)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys down to values; lists of mappings (data.sources) by index, lists of scalars kept whole."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        out = {f"{prefix}length": len(obj)} if prefix else {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(
    before: dict,
    now: dict,
    *,
    sections: tuple[str, ...] | None = None,
    ignore: frozenset[str] = frozenset(),
    then: str = "checkpoint",
) -> list[str]:
    """'lora.r: checkpoint 16, now 8' for every setting that differs between two dumped configs (model_dump(mode=
    "json")), limited to top-level `sections` and skipping the dotted keys in `ignore`; `then` names `before`."""
    a, b = _flatten(before), _flatten(now)
    missing = object()
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key in ignore or (sections and key.split(".", 1)[0] not in sections):
            continue
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            out.append(f"{key}: {then} {_shown(x, missing)}, now {_shown(y, missing)}")
    return out


def _shown(v: Any, missing: object) -> str:
    if v is missing:
        return "(not set)"
    return v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")
