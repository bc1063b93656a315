"""The HTTP side: Starlette routes in OpenAI's shapes, over the scheduler's engine thread.

    GET  /                      the chat page (static/index.html)
    GET  /health                status, model, replica id, precision, speculation, slots in use
    GET  /v1/models             the one model served
    POST /v1/chat/completions   a chat reply, whole or streamed (server-sent events)
    POST /v1/completions        a continuation of a prompt, whole or streamed

Every error reaches the client as OpenAI's JSON {"error": {...}} with its status; a bug is a 500 that
says so, its traceback kept for the server's log.
"""

import asyncio
import hmac
import json
import os
import socket
import time
import uuid
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from .. import args, tools
from ..chat import encode_prompt
from ..errors import ArgumentError, MinigptError, one_line
from .protocol import MAX_BODY, ApiError, chat_request, completion_request, parse_body
from .scheduler import Busy, Job

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")


def model_id(path):
    """The name the API gives the model: its file's name without .mgpt."""
    return os.path.basename(path).removesuffix(".mgpt")


class Service:
    """What the routes share: the model, its names, the scheduler and the API key (None: no key)."""

    def __init__(self, model, scheduler, model_id, api_key=None):
        self.model, self.scheduler, self.api_key = model, scheduler, api_key
        self.model_id = model_id
        self.names = {model_id, model.name, model.config.name}   # any of them picks this model
        self.replica = f"{socket.gethostname()}:{os.getpid()}"   # stable for the process's life
        self.created = int(time.time())

    def authorize(self, request):
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    def check_model(self, name):
        if name is not None and name not in self.names:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {self.model_id!r}",
                           "model", "model_not_found")

    def prompt_ids(self, req):
        """The request's prompt as token ids: a conversation rendered with the model's chat template,
        or a completion's prompt. Runs in a worker thread (templates render in a child process)."""
        tok, param = self.model.tokenizer, "messages" if req.messages is not None else "prompt"
        try:
            if req.messages is not None:
                given = req.tools if req.tool_choice != "none" else None   # "none": the model is not told of them
                text = self.model.template.render(req.messages, add_generation_prompt=True, tools=given)
                ids = encode_prompt(tok, text)
            elif isinstance(req.prompt, str):
                ids = tok.encode(req.prompt, add_bos=tok.add_bos, special=True)
            else:
                ids = args.token_ids("prompt", req.prompt, self.model.config.vocab_size)
        except MinigptError as e:   # a template that refuses the conversation, a token id out of range
            raise ApiError(400, one_line(e), param) from None
        if not ids:   # an empty prompt: continue from the start of a text
            ids = [tok.bos_id if tok.bos_id is not None else tok.eos_id]
        if len(ids) >= self.model.n_ctx:
            raise ApiError(413, f"the prompt is {len(ids)} tokens long; the context holds {self.model.n_ctx}, "
                                f"with room for at least one more", param, "context_length_exceeded")
        return ids

    def constraint(self, req):
        """The constraint of a chat reply, as Job takes it: the response_format's JSON, else what the
        tools offered ask for (tools.constraint: a call when one is required; under "auto", a call the
        model begins is constrained from its marker on), else None (free text). A bad schema is a 400
        here, before the request is queued."""
        param = "response_format" if req.response_format is not None else "tools"
        try:
            if req.response_format is not None or req.tool_choice == "none":
                return self.model.constraint(response_format=req.response_format)
            return tools.constraint(self.model, tools.Offer(req.tools, req.tool_choice, req.tool_name))
        except ArgumentError as e:
            raise ApiError(400, one_line(e), param) from None

    async def submit(self, req):
        """Check the request's model, build its prompt and constraint, and queue it: the Job."""
        self.check_model(req.model)
        if req.tool_choice != "none" and not self.model.template.renders_tools:
            raise ApiError(400, f"this model's chat template ({self.model.template.name}) has no place for tools",
                           "tools")
        ids = await run_in_threadpool(self.prompt_ids, req)
        constraint = None
        if req.messages is not None:
            constraint = await run_in_threadpool(self.constraint, req)
        stop = req.stop + (self.model.template.stop if req.messages is not None else ())
        job = Job(ids, req.settings, req.max_tokens, stop, req.logprobs, req.top_logprobs, constraint)
        try:
            return self.scheduler.submit(job)
        except Busy:
            raise ApiError(503, "the server is busy: every slot is in use and the wait queue is full; retry later",
                           code="server_busy") from None


# --- routes

async def page(request):
    return FileResponse(PAGE, media_type="text/html")


async def health(request):
    svc = request.app.state.service
    busy, waiting = svc.scheduler.load()
    return JSONResponse({"status": "ok", "model": svc.model_id, "replica": svc.replica,
                         "precision": svc.model.engine.precision, "speculate": svc.scheduler.speculate or "none",
                         "draft_tokens": svc.scheduler.drafted, "draft_tokens_accepted": svc.scheduler.accepted,
                         "slots": len(svc.scheduler.slots),
                         "slots_busy": busy, "waiting": waiting})


async def models(request):
    svc = request.app.state.service
    svc.authorize(request)
    return JSONResponse({"object": "list", "data": [_model_card(svc)]})


async def model_info(request):
    svc = request.app.state.service
    svc.authorize(request)
    svc.check_model(request.path_params["name"])
    return JSONResponse(_model_card(svc))


def _model_card(svc):
    return {"id": svc.model_id, "object": "model", "created": svc.created, "owned_by": "minigpt"}


async def chat_completions(request):
    svc = request.app.state.service
    svc.authorize(request)
    req = chat_request(await _read_json(request))
    job = await svc.submit(req)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": svc.model_id}
    if req.stream:
        return _EventStream(_chat_chunks(svc, job, req, {**head, "object": "chat.completion.chunk"}), job)
    text, logprobs, end = await _collect(request, job)
    message, finish = {"role": "assistant", "content": text}, end.finish
    if req.tool_choice != "none":
        message["content"], calls = tools.parse(text, req.tools)
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls" if finish == "stop" else finish
    choice = {"index": 0, "message": message, "logprobs": _chat_logprobs(svc, logprobs) if req.logprobs else None,
              "finish_reason": finish}
    return JSONResponse({**head, "choices": [choice], "usage": end.usage})


async def completions(request):
    svc = request.app.state.service
    svc.authorize(request)
    req = completion_request(await _read_json(request))
    job = await svc.submit(req)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": svc.model_id}
    if req.stream:
        return _EventStream(_completion_chunks(job, req, head), job)
    text, _, end = await _collect(request, job)
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": end.finish}
    return JSONResponse({**head, "choices": [choice], "usage": end.usage})


# --- reading and answering

async def _read_json(request):
    """The body as a JSON object, refused (413) as soon as it is known to be over MAX_BODY."""
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise ApiError(400, "bad Content-Length header") from None
    if declared > MAX_BODY:
        raise ApiError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY:
            break
    return parse_body(bytes(body))


async def _collect(request, job):
    """A whole reply: (text, [logprobs], the last event). A client that goes away first cancels it."""
    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.ensure_future(watch())
    text, logprobs, end = [], [], None
    try:
        async for event in job.events():
            text.append(event.text)
            logprobs += event.logprobs
            end = event if event.finish or event.error else None
    finally:
        watcher.cancel()
        job.cancel()   # freed at once if we leave early; a no-op after the end
    if end is None:   # cancelled: the client is gone, and no one reads this answer
        raise ApiError(499, "client disconnected")
    if end.error:
        raise ApiError(500, end.error)
    return "".join(text), logprobs, end


class _EventStream(StreamingResponse):
    """Server-sent events whose job is cancelled the moment the response ends, however it ends: a
    client that disconnects mid-stream frees its slot at once."""

    def __init__(self, chunks, job):
        # X-Accel-Buffering: a reverse proxy (nginx) would otherwise hold the pieces back and send them in bulk
        super().__init__(chunks, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def _sse(data):
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error_sse(message):
    return _sse(ApiError(500, message).body())


async def _chat_chunks(svc, job, req, head):
    """OpenAI's chunks: the role, content deltas (and tool_calls deltas, when tools may be called), the
    finish reason, [usage,] [DONE]."""
    usage = {"usage": None} if req.include_usage else {}
    calls = tools.CallStream(req.tools) if req.tool_choice != "none" else None

    def chunk(delta, finish=None, logprobs=None):
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish}], **usage})

    yield chunk({"role": "assistant", "content": ""})
    async for event in job.events():
        if event.error:
            yield _error_sse(event.error)
            break
        deltas = [{"content": event.text}] if calls is None else calls.push(event.text)
        if event.finish and calls is not None:
            deltas += calls.flush()
        if event.logprobs and req.logprobs:   # a token's logprobs go with the first delta of its text
            lp = _chat_logprobs(svc, event.logprobs)
            yield chunk(deltas.pop(0) if deltas else {"content": ""}, logprobs=lp)
        for delta in deltas:
            if delta != {"content": ""}:
                yield chunk(delta)
        if event.finish:
            finish = "tool_calls" if calls is not None and calls.n_calls and event.finish == "stop" else event.finish
            yield chunk({}, finish)
            if req.include_usage:
                yield _sse({**head, "choices": [], "usage": event.usage})
    yield "data: [DONE]\n\n"


async def _completion_chunks(job, req, head):
    usage = {"usage": None} if req.include_usage else {}

    def chunk(text, finish=None):
        return _sse({**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                     **usage})

    async for event in job.events():
        if event.error:
            yield _error_sse(event.error)
            break
        if event.text:
            yield chunk(event.text)
        if event.finish:
            yield chunk("", event.finish)
            if req.include_usage:
                yield _sse({**head, "choices": [], "usage": event.usage})
    yield "data: [DONE]\n\n"


def _chat_logprobs(svc, logprobs):
    """{"content": [{token, logprob, bytes, top_logprobs}]} from [(token, logprob, [(id, logprob)])]."""
    def entry(token, logprob):
        return {**_token(svc.model.tokenizer, token), "logprob": logprob}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, q) for i, q in top]} for t, lp, top in logprobs]}


def _token(tok, token):
    """A token as OpenAI shows it: its text and bytes. A piece of a character shows its bytes escaped
    (\\xe4) rather than as U+FFFD; a control token shows its name."""
    b = tok.token_bytes(token)
    if not b:
        return {"token": tok.token_text(token), "bytes": list(tok.token_text(token).encode("utf-8", "replace"))}
    return {"token": b.decode("utf-8", "backslashreplace"), "bytes": list(b)}


# --- errors

async def _api_error(request, exc):
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request, exc):   # Starlette's own: unknown path (404), wrong method (405)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(ApiError(exc.status_code, exc.detail, code=code).body(), status_code=exc.status_code)


async def _internal_error(request, exc):   # a bug: the traceback goes to the server's log, not to the client
    return JSONResponse(ApiError(500, "internal server error").body(), status_code=500)


def create_app(model, scheduler, model_id, api_key=None):
    """The Starlette app serving `model` through `scheduler`, whose engine thread runs while the app does."""
    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = Starlette(
        routes=[Route("/", page), Route("/health", health), Route("/v1/models", models),
                Route("/v1/models/{name:path}", model_info),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/completions", completions, methods=["POST"])],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan)
    app.state.service = Service(model, scheduler, model_id, api_key)
    return app
