"""The provider registry and the catalogue of models clients may ask for.

Adding a provider is one module and one line in ``build_providers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sse_gateway.config import StreamsConfig
from sse_gateway.providers.base import ChatRequest, Delta, Provider, ProviderError

__all__ = ["Catalog", "ChatRequest", "Delta", "ModelUnavailable", "Provider", "ProviderError",
           "build_providers"]


def build_providers(config: StreamsConfig) -> dict[str, Provider]:
    """Build each provider once per process, with pools sized for the worker."""
    from sse_gateway.providers.anthropic import AnthropicProvider
    from sse_gateway.providers.demo import DemoProvider
    from sse_gateway.providers.openai import OpenAIProvider

    http: dict[str, Any] = {"max_connections": config.max_active_streams,
                            "connect_timeout": config.provider_connect_timeout_s}
    providers: list[Provider] = [
        DemoProvider(ttft_s=config.demo_ttft_s, token_delay_s=config.demo_token_delay_s),
        OpenAIProvider(api_key=config.openai_api_key, base_url=config.openai_base_url, **http),
        AnthropicProvider(api_key=config.anthropic_api_key,
                          base_url=config.anthropic_base_url,
                          default_max_tokens=config.default_max_tokens, **http),
    ]
    return {p.name: p for p in providers}


class ModelUnavailable(LookupError):
    """The model is unknown, not allowed, or its provider is not configured."""


@dataclass(frozen=True)
class Catalog:
    """Which ``provider/model`` strings are served, from the ``MODELS`` setting."""

    providers: dict[str, Provider]
    models: tuple[str, ...]

    def resolve(self, model: str) -> tuple[Provider, str]:
        """Return the provider and its own model name, or raise ModelUnavailable."""
        provider_name, _, name = model.partition("/")
        provider = self.providers.get(provider_name)
        if not name:
            raise ModelUnavailable(f"model {model!r} must be 'provider/model', e.g. 'demo/echo'")
        if provider is None:
            raise ModelUnavailable(f"unknown provider {provider_name!r} "
                                   f"(known: {', '.join(self.providers)})")
        if model not in self.models and f"{provider_name}/*" not in self.models:
            raise ModelUnavailable(f"model {model!r} is not served here (see GET /v1/models)")
        if not provider.available:
            raise ModelUnavailable(f"provider {provider_name!r} is not configured: "
                                   f"set {provider_name.upper()}_API_KEY")
        return provider, name

    def listing(self) -> list[dict[str, Any]]:
        """The named models for pickers; wildcard entries are not listed."""
        listed = []
        for model in self.models:
            provider_name = model.partition("/")[0]
            provider = self.providers.get(provider_name)
            if model.endswith("/*") or provider is None:
                continue
            entry: dict[str, Any] = {"id": model, "provider": provider_name}
            if not provider.available:
                entry["available"] = False
            listed.append(entry)
        return listed
