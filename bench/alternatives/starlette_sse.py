"""The async alternative: Starlette + sse-starlette + AsyncOpenAI, under uvicorn.

    uvicorn bench.alternatives.starlette_sse:app          # one process; uvloop + httptools
"""

import json

from openai import AsyncOpenAI
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

client = AsyncOpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment


async def chat(request: Request) -> EventSourceResponse:
    body = await request.json()

    async def events():
        stream = await client.chat.completions.create(
            model=body["model"],
            messages=[{"role": "user", "content": body["prompt"]}],
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield {"data": json.dumps({"content": chunk.choices[0].delta.content})}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events())


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/chat", chat, methods=["POST"]),
                        Route("/healthz", healthz)])
