"""domain-expert: turn a foundation LLM into a domain expert, with an honest comparison against its base."""

__version__ = "0.1.0"
