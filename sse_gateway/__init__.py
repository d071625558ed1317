"""sse-gateway's engine: stream LLM output as numbered, resumable, cancellable events.

Import the public API from here (``from sse_gateway import Streams``); the
submodules are the engine's parts. Nothing below ``sse_gateway.flask`` imports
Flask.
"""

__version__ = "0.2.0"
