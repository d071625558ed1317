"""``flask --app sse_gateway_client.cli stream "prompt"``: stream one answer from a running gateway.

A client of the HTTP API (``sse_gateway_client``), not of this process's app: it talks
to the gateway at ``--url`` as any other client would, so it serves a local
``make run`` and a remote deployment alike. Tokens go to stdout the moment
they arrive (so the answer can be piped), everything else to stderr: reasoning
(dimmed) as it streams, a refusal (marked), each tool call once complete, and
the summary line.

Exit status: 0 when the stream is done; 1 on an error (the gateway refused the
request, the stream ended with an error or was cancelled elsewhere, or it
could not be resumed); 130 on Ctrl-C, after the stream was cancelled
(``DELETE``), so the provider stops generating at once.

Which ``--app``: the command is registered by the gateway's factory, so
``flask --app app stream`` and ``flask --app wsgi stream`` work, but both
build the whole gateway first (both provider SDKs imported: seconds; the
broker; the server's start-up log lines on stderr), and ``wsgi`` also
monkey-patches the process with gevent, late (``flask`` has imported ``ssl``
by then). httpx still works there, over TLS too, but a client has no use for
gevent, and on Ctrl-C gevent's hub prints the ``KeyboardInterrupt`` itself.
``flask --app sse_gateway_client.cli`` finds ``create_app`` below: a bare Flask app with just
this command, no gevent, ready in a fraction of a second.
"""

from __future__ import annotations

import secrets

import click
from flask import Flask

from sse_gateway_client import (
    Cancelled,
    ClientError,
    Done,
    GatewayClient,
    GatewayError,
    Message,
    Reasoning,
    Refusal,
    StreamError,
    Token,
    ToolCallDone,
)


@click.command("stream")
@click.argument("prompt")
@click.option("--url", envvar="GATEWAY_URL", default="http://127.0.0.1:8000",
              show_default="GATEWAY_URL or http://127.0.0.1:8000",
              help="The gateway's base URL.")
@click.option("--model", default="demo/echo", show_default=True,
              help="provider/model, as listed by GET /v1/models.")
@click.option("--api-key", envvar="GATEWAY_API_KEY", show_default="GATEWAY_API_KEY",
              help="Sent as 'Authorization: Bearer <key>'.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Longest answer, in tokens.")
@click.option("--system", help="A system message sent before the prompt.")
@click.pass_context
def stream_command(ctx: click.Context, prompt: str, url: str, model: str,
                   api_key: str | None, max_tokens: int | None, system: str | None) -> None:
    """Stream the answer to PROMPT from the gateway at --url, token by token."""
    messages: list[Message] = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    # Named here, so that a Ctrl-C while the POST is on its way can still cancel it.
    stream_id = secrets.token_urlsafe(18)
    mid_line = False  # the answer printed so far does not end with a newline
    aside: str | None = None  # the kind of text streaming on stderr (reasoning, refusal)
    with GatewayClient(url, api_key) as client:
        try:
            chat = client.stream(messages=messages, model=model, max_tokens=max_tokens,
                                 stream_id=stream_id)
            for event in chat:
                if isinstance(event, Reasoning | Refusal):
                    kind = "reasoning" if isinstance(event, Reasoning) else "refusal"
                    if aside != kind:
                        _err(click.style(f"[{kind}] ", bold=True), mid_line, nl=False)
                        aside, mid_line = kind, False
                    click.echo(click.style(event.text, dim=kind == "reasoning",
                                           fg="red" if kind == "refusal" else None),
                               nl=False, err=True)
                    continue
                if aside is not None:  # the aside ends: its own line
                    click.echo(err=True)
                    aside = None
                if isinstance(event, Token):
                    click.echo(event.text, nl=False)  # flushed at once
                    if event.text:
                        mid_line = not event.text.endswith("\n")
                elif isinstance(event, ToolCallDone):
                    _err(f"[tool call {event.index}] {event.name}({event.arguments}) "
                         f"id {event.call_id}", mid_line)
                    mid_line = False
                elif isinstance(event, Done):
                    _err(_summary(event, stream_id), mid_line)
                elif isinstance(event, StreamError):
                    _err(f"error: {event.code}: {event.message}", mid_line)
                    ctx.exit(1)
                elif isinstance(event, Cancelled):
                    _err(f"stream {stream_id} was cancelled ({event.reason})", mid_line)
                    ctx.exit(1)
        except KeyboardInterrupt:
            _err(_cancel(client, stream_id), mid_line)
            ctx.exit(130)
        except GatewayError as exc:
            _err(f"error: the gateway answered {exc.status} {exc.code}: {exc.message}", mid_line)
            ctx.exit(1)
        except ClientError as exc:
            _err(f"error: {exc}", mid_line)
            ctx.exit(1)


def _cancel(client: GatewayClient, stream_id: str) -> str:
    try:
        status = client.cancel(stream_id)
    except GatewayError as exc:
        if exc.status == 404:  # interrupted before the gateway made the stream
            return "interrupted; no stream was started"
        return f"interrupted; could not cancel stream {stream_id}: {exc}"
    except (ClientError, KeyboardInterrupt) as exc:
        return f"interrupted; could not cancel stream {stream_id}: {exc or 'interrupted again'}"
    return f"cancelled stream {stream_id} ({status.get('status')})"


def _summary(done: Done, stream_id: str) -> str:
    tokens = done.usage.output_tokens
    ttft = done.metrics.ttft_ms
    return (f"[{done.model}] finish: {done.finish_reason or '-'}, "
            f"tokens: {'-' if tokens is None else tokens}, "
            f"ttft: {'-' if ttft is None else f'{ttft:.0f} ms'}, stream: {stream_id}")


def _err(message: str, mid_line: bool, nl: bool = True) -> None:
    """A line on stderr, on a line of its own after the answer when both share a terminal."""
    prefix = "\n" if mid_line else ""
    click.echo(prefix + message, err=True, nl=nl)


def create_app() -> Flask:
    """A bare Flask app with only the client commands, for ``flask --app sse_gateway_client.cli``.

    The gateway's own factory (``flask --app app``) registers them as well, but
    building the gateway imports both provider SDKs (seconds), opens its broker
    and logs the server's warnings: none of which a client needs.
    """
    cli_app = Flask(__name__)
    cli_app.cli.add_command(stream_command)
    return cli_app
