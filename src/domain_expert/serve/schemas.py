"""Request bodies of the OpenAI routes, validated strictly: an unknown field is refused rather than ignored, so a
client never believes a setting was applied when it was not. No field is ever used as a file path."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_PROMPT_TOKENS = 4096
DEFAULT_MAX_TOKENS_LIMIT = 2048
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; completions allows 5, we allow the same 20 for both
MAX_CHOICES = 16  # n (times the number of prompts for /v1/completions)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: str
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessage]
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    user: str | None = None


class CompletionRequest(_Strict):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default; 0 (with echo) scores the prompt
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool | None = False
    user: str | None = None
