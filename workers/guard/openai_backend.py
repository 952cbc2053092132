"""The `openai` guard: GuardReasoner-VL behind an OpenAI-compatible chat-completions server.

For a GPU pool scaled apart from the workers (`vllm serve`, `transformers serve`). The worker keeps
`openai_concurrency` requests open at all times (`concurrent_requests`): each goes out as it arrives and
its place is taken the moment it is answered, so the server's own batching always has that many. Images travel as
data URIs. Servers with a reasoning parser move the `<think>` text into `reasoning_content`; both parts
are read and put back together before parsing.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

from PIL import Image

from workers.errors import BackendError, BackendTimeout, BackendUnavailable
from workers.guard.base import GuardOutcome, GuardRequest
from workers.guard.parse import outcome_from_output
from workers.guard.prompt import chat_messages
from workers.settings import GuardSettings


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(request: GuardRequest) -> list[dict[str, Any]]:
    """The shared prompt, with each image part carrying its image as a data URI, in order."""
    images = iter(request.images)
    messages = chat_messages(request)
    for message in messages:
        message["content"] = [
            {"type": "image_url", "image_url": {"url": data_uri(next(images))}} if part["type"] == "image" else part
            for part in message["content"]
        ]
    return messages


def split_reasoning(message: Any) -> str | None:
    """The think text a server split off, under either name servers use for it."""
    extra = getattr(message, "model_extra", None) or {}
    return getattr(message, "reasoning_content", None) or extra.get("reasoning_content") or extra.get("reasoning")


class OpenAIGuard:
    name = "openai"

    def __init__(self, client: Any, model: str, max_tokens: int, concurrency: int) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrent_requests = concurrency

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> OpenAIGuard:
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:
            raise BackendUnavailable("the openai backend needs the `openai` package: pip install 'guardstream[openai]'") from exc
        if settings.openai_base_url is None:
            raise BackendUnavailable("the openai backend needs GUARDSTREAM_GUARD__OPENAI_BASE_URL")
        model = settings.openai_model or (str(settings.model_path) if settings.model_path else None)
        if model is None:
            raise BackendUnavailable("the openai backend needs GUARDSTREAM_GUARD__OPENAI_MODEL (or MODEL_PATH)")
        client = AsyncOpenAI(base_url=settings.openai_base_url, api_key=settings.openai_api_key.get_secret_value(),
                             timeout=settings.timeout_s, max_retries=settings.openai_max_retries)
        return cls(client, model, settings.max_new_tokens, settings.openai_concurrency)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def close(self) -> None:
        await self.client.close()

    async def _one(self, request: GuardRequest) -> GuardOutcome:
        import openai

        async with self._slots:
            try:
                completion = await self.client.chat.completions.create(
                    model=self.model, messages=openai_messages(request), max_tokens=self.max_tokens, temperature=0
                )
            except openai.APITimeoutError as exc:
                raise BackendTimeout(f"openai server timed out: {exc}") from exc
            except openai.APIError as exc:
                raise BackendError(f"openai server: {type(exc).__name__}: {exc}") from exc
        message = completion.choices[0].message
        usage = completion.usage
        return outcome_from_output(
            message.content or "", request.response is not None, self.name, reasoning=split_reasoning(message),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )
