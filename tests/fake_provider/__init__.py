"""A fake OpenAI / Anthropic streaming provider for tests: see ``server.py``.

The stream items a ``Behaviour`` may hold besides text, ``recorded`` (a real
recorded stream) and ``thinking_signature`` come from ``fake_wire``.
"""

from fake_wire import (
    Raw,
    Reasoning,
    RedactedThinking,
    Refusal,
    Token,
    ToolArgs,
    ToolCall,
    recorded,
    thinking_signature,
)
from tests.fake_provider.server import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    RECORDINGS,
    Behaviour,
    Call,
    FakeProvider,
    Outcome,
)

__all__ = [
    "ANTHROPIC_PATH",
    "OPENAI_PATH",
    "RECORDINGS",
    "Behaviour",
    "Call",
    "FakeProvider",
    "Outcome",
    "Raw",
    "Reasoning",
    "RedactedThinking",
    "Refusal",
    "Token",
    "ToolArgs",
    "ToolCall",
    "recorded",
    "thinking_signature",
]
