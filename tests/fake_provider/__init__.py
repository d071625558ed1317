"""A fake OpenAI / Anthropic streaming provider for tests: see ``server.py``."""

from tests.fake_provider.server import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    Behaviour,
    Call,
    FakeProvider,
    Outcome,
)

__all__ = [
    "ANTHROPIC_PATH",
    "OPENAI_PATH",
    "Behaviour",
    "Call",
    "FakeProvider",
    "Outcome",
]
