"""The console's pages (FastAPI, server-rendered Jinja2 templates with autoescaping, one small script).

    GET  /signin, POST /signin, POST /signout      sign in with a reviewer id and token
    GET  /                                         the next item in the queue for this reviewer
    GET  /items/{id}                               the review page: event, images, every verdict, labels
    POST /items/{id}/label | /items/{id}/skip      label (published after the undo window) or skip
    POST /undo                                     undo this reviewer's last label
    GET  /items/{id}/images/{n}                    a thumbnail, through the worker's fetcher
    GET  /quality, /quality/plot.png               live precision/recall/F1, agreement, the queue
    POST /api/reports                              downstream users report an event (bearer token)
"""


import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated

import structlog
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Form, Header, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from console import quality
from console.auth import SESSION_COOKIE, SIGNIN_COOKIE, Access, CsrfRefused, NotSignedIn, Session, same_token
from console.checks import CheckRefused
from console.intake import EventReader
from console.metrics import ConsoleMetrics
from console.outbox import LabelPublisher
from console.sampling import Reason
from console.settings import ConsoleSettings
from console.store import Incoming, LabelRefused, NoSuchItem, QueueStats, ReviewStore, storable
from console.thumbnails import Thumbnails
from schemas.events import SourceRef
from workers.errors import GuardstreamError

log = structlog.get_logger("guardstream.console")
HERE = FilePath(__file__).parent
PAGES = {"next_item", "item_page", "quality_page"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class Parts:
    """What the pages use, made and owned by the console service."""

    settings: ConsoleSettings
    store: ReviewStore
    access: Access
    metrics: ConsoleMetrics
    thumbnails: Thumbnails
    events: EventReader
    publisher: LabelPublisher | None = None


ItemId = Annotated[int, Path(ge=1, le=2**31 - 1)]
MAX_FORM_BYTES = 64 * 1024  # a label's note is at most 4,000 characters


class Coordinates(BaseModel):
    topic: str = Field(min_length=1, max_length=249)
    partition: int = Field(ge=0, le=2**31 - 1)
    offset: int = Field(ge=0, le=2**63 - 1)


class Report(BaseModel):
    """A downstream user's report: the event, and the verdict they received (so the console can find an event
    it did not sample)."""

    event_id: str = Field(min_length=1, max_length=256)
    reason: str = Field("", max_length=2_000)
    verdict: Coordinates | None = None


def create_app(parts: Parts) -> FastAPI:
    app = FastAPI(title="guardstream console", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["reasons"] = {str(r): r.name.replace("_", " ").lower() for r in Reason}
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    store, access, metrics = parts.store, parts.access, parts.metrics

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        declared = request.headers.get("content-length", "0")
        if request.method == "POST" and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
            response: Response = Response("a form or report is at most 64 KiB, with its length declared",
                                          status_code=413, media_type="text/plain")
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, _: NotSignedIn) -> Response:
        route = request.scope.get("route")
        if getattr(route, "name", None) in PAGES:  # a page sends the browser to sign in; images, forms: 401
            return RedirectResponse("/signin", status_code=303)
        return JSONResponse({"error": "sign in first"}, status_code=401)

    @app.exception_handler(CsrfRefused)
    async def _csrf(_: Request, __: CsrfRefused) -> Response:
        return HTMLResponse("the form's CSRF token is missing or wrong: reload the page and try again",
                            status_code=403)

    def session(request: Request) -> Session:
        return access.session(request.cookies.get(SESSION_COOKIE))

    async def checked(request: Request, reviewer: Annotated[Session, Depends(session)]) -> Session:
        form = await request.form()
        if not same_token(reviewer.csrf, form.get("csrf")):  # type: ignore[arg-type]
            raise CsrfRefused()
        return reviewer

    def page(request: Request, name: str, status: int = 200, **context: object) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    # -- signing in -----------------------------------------------------------------------------------------

    def signin_page(request: Request, status: int = 200, error: str = "") -> HTMLResponse:
        csrf = secrets.token_urlsafe(24)
        response = page(request, "signin.html", status=status, csrf=csrf, error=error)
        access.set_signin_csrf(response, csrf)
        return response

    @app.get("/signin", response_class=HTMLResponse)
    async def signin_form(request: Request) -> HTMLResponse:
        return signin_page(request)

    @app.post("/signin")
    async def signin(request: Request, reviewer: Annotated[str, Form(max_length=256)],
                     token: Annotated[str, Form(max_length=1024)], csrf: Annotated[str, Form()] = "") -> Response:
        if not same_token(access.signin_csrf(request.cookies.get(SIGNIN_COOKIE)), csrf):
            raise CsrfRefused()
        try:
            holds = await access.check_reviewer(reviewer, token, _client(request))
        except CheckRefused as exc:
            metrics.sign_in_failures.inc()
            refused = signin_page(request, 429, exc.message)
            return _refused(refused, exc, "sign_in")
        if not holds:
            metrics.sign_in_failures.inc()
            return signin_page(request, 401, "unknown reviewer or wrong token")
        response = RedirectResponse("/", status_code=303)
        access.start_session(response, reviewer)
        return response

    @app.post("/signout")
    async def signout(reviewer: Annotated[Session, Depends(checked)]) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        access.end_session(response, reviewer)
        return response

    # -- reviewing ------------------------------------------------------------------------------------------

    @app.get("/")
    async def next_item(request: Request, reviewer: Annotated[Session, Depends(session)]) -> Response:
        item_id = await run_in_threadpool(store.next_item, reviewer.reviewer, datetime.now(UTC))
        if item_id is not None:
            return RedirectResponse(f"/items/{item_id}", status_code=303)
        stats = await run_in_threadpool(store.queue_stats, datetime.now(UTC))
        return page(request, "empty.html", session=reviewer, stats=stats)

    @app.get("/items/{item_id}", response_class=HTMLResponse)
    async def item_page(request: Request, item_id: ItemId, reviewer: Annotated[Session, Depends(session)],
                        undone: str = "") -> HTMLResponse:
        item = await run_in_threadpool(store.item, item_id)
        if item is None:
            return page(request, "message.html", status=404, session=reviewer, message=f"there is no item {item_id}")
        mine = next((x for x in item.live_labels if x.reviewer == reviewer.reviewer), None)
        return page(request, "review.html", session=reviewer, item=item, mine=mine, undone=undone,
                    others_visible=mine is not None or item.done, note_limit=parts.settings.review.max_note_chars,
                    max_thumbnails=parts.settings.review.max_thumbnails)

    @app.post("/items/{item_id}/label")
    async def label(request: Request, item_id: ItemId, reviewer: Annotated[Session, Depends(checked)],
                    request_label: Annotated[str, Form(alias="request")],
                    response_label: Annotated[str, Form(alias="response")] = "",
                    note: Annotated[str, Form()] = "") -> Response:
        try:
            request_harmful = _harmful(request_label, required=True)
            response_harmful = _harmful(response_label, required=False)
            if len(note) > parts.settings.review.max_note_chars:
                raise LabelRefused(f"the note is over {parts.settings.review.max_note_chars} characters")
            await run_in_threadpool(store.label, item_id, reviewer.reviewer, request_harmful, response_harmful,
                                    storable(note), datetime.now(UTC))
        except LabelRefused as exc:
            status = 404 if isinstance(exc, NoSuchItem) else 409
            return page(request, "message.html", status=status, session=reviewer, message=str(exc), item_id=item_id)
        metrics.labels_given.inc()
        if parts.publisher is not None:
            parts.publisher.wake()
        return RedirectResponse("/", status_code=303)

    @app.post("/items/{item_id}/skip")
    async def skip(request: Request, item_id: ItemId, reviewer: Annotated[Session, Depends(checked)]) -> Response:
        try:
            await run_in_threadpool(store.skip, item_id, reviewer.reviewer, datetime.now(UTC))
        except NoSuchItem as exc:
            return page(request, "message.html", status=404, session=reviewer, message=str(exc))
        return RedirectResponse("/", status_code=303)

    @app.post("/undo")
    async def undo(reviewer: Annotated[Session, Depends(checked)]) -> Response:
        undone = await run_in_threadpool(store.undo_last, reviewer.reviewer, datetime.now(UTC))
        if undone is None:
            return RedirectResponse("/", status_code=303)
        how = "withdrawn" if undone.withdrawn else "superseded"
        return RedirectResponse(f"/items/{undone.item_id}?undone={how}", status_code=303)

    @app.get("/items/{item_id}/images/{index}")
    async def image(item_id: ItemId, index: Annotated[int, Path(ge=0, le=64)], _: Annotated[Session, Depends(session)]) -> Response:
        images = await run_in_threadpool(store.images, item_id)
        if images is None or index >= min(len(images), parts.settings.review.max_thumbnails):
            return Response("no such image, or one the review page does not show", status_code=404,
                            media_type="text/plain")
        try:
            png = await parts.thumbnails.png(images[index])
        except GuardstreamError as exc:
            return Response(f"image not shown: {exc.summary} ({exc.code})", status_code=422, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    # -- quality --------------------------------------------------------------------------------------------

    @app.get("/quality", response_class=HTMLResponse)
    async def quality_page(request: Request, reviewer: Annotated[Session, Depends(session)]) -> HTMLResponse:
        judged, pairs, stats = await run_in_threadpool(_quality_data, store)
        return page(request, "quality.html", session=reviewer, judged=len(judged), stats=stats,
                    overall=quality.estimate(judged), groups=quality.by_task_and_modality(judged),
                    models=quality.by_model(judged),
                    agreement={task: quality.agreement(p) for task, p in pairs.items()})

    @app.get("/quality/plot.png")
    async def quality_plot(_: Annotated[Session, Depends(session)]) -> Response:
        judged = await run_in_threadpool(store.judged)
        return Response(await run_in_threadpool(quality.plot_quality, judged), media_type="image/png")

    # -- reports --------------------------------------------------------------------------------------------

    @app.post("/api/reports", status_code=202)
    async def report(request: Request, body: Report, authorization: Annotated[str | None, Header()] = None
                     ) -> Response:
        if not parts.settings.sampling.reports:
            return JSONResponse({"error": "reports are turned off (SAMPLING__REPORTS)"}, status_code=403)
        try:
            reporter = await access.check_reporter(authorization, _client(request))
        except CheckRefused as exc:
            return _refused(JSONResponse({"error": exc.message}, status_code=429), exc, "report")
        if reporter is None:
            return JSONResponse({"error": "a reporter's bearer token is required"}, status_code=401)
        now = datetime.now(UTC)
        event_id, reason = storable(body.event_id), storable(body.reason)
        if await run_in_threadpool(store.report, event_id, reporter, reason, now):
            return JSONResponse({"queued": True}, status_code=202)
        if body.verdict is None:
            return JSONResponse({"queued": False, "error": "the console has not seen this event: send the verdict's "
                                 "coordinates (`verdict`)"}, status_code=404)
        try:
            queued = await _queue_reported(parts, body, now)
        except KafkaError:
            return JSONResponse({"error": "the broker did not answer: try again"}, status_code=503)
        if queued:
            await run_in_threadpool(store.report, event_id, reporter, reason, now)
        return JSONResponse({"queued": queued}, status_code=202 if queued else 404)

    return app


def _client(request: Request) -> str:
    """The client's address (from X-Forwarded-For when FORWARDED_ALLOW_IPS trusts the proxy): what the sign-in
    throttle and the per-client check limit key on."""
    return request.client.host if request.client else ""


def _refused(response: Response, refused: CheckRefused, what: str) -> Response:
    log.info("token_check_refused", what=what, reason=refused.reason, retry_after_s=round(refused.retry_after_s, 3))
    response.headers["Retry-After"] = refused.retry_after
    return response


async def _queue_reported(parts: Parts, body: Report, now: datetime) -> bool:
    """Read the reported verdict and its event at their coordinates, and queue the event as reported."""
    assert body.verdict is not None
    at = SourceRef(**body.verdict.model_dump())
    verdict = await parts.events.verdict(body.event_id, at)
    event = await parts.events.event(body.event_id, verdict.source) if verdict is not None else None
    if verdict is None or event is None:
        return False
    incoming = Incoming(verdict, at, [Reason.REPORTED])
    await run_in_threadpool(parts.store.add, [incoming], {event.event_id: (event, verdict.source)}, now)
    return True


def _harmful(value: str, required: bool) -> bool | None:
    if value == "harmful":
        return True
    if value == "unharmful":
        return False
    if value == "" and not required:
        return None
    raise LabelRefused("choose harmful or unharmful for the request" if required else "the response label is "
                       "harmful, unharmful or empty")


def _quality_data(store: ReviewStore) -> tuple[list[quality.Judged], dict[str, list[tuple[bool, bool]]], QueueStats]:
    return store.judged(), store.agreement_pairs(), store.queue_stats(datetime.now(UTC))
