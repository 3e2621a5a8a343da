"""``mnistlab serve``: draw a digit in the browser and see what the model sees and says.

A FastAPI app (OpenAPI at ``/openapi.json``) with one page and a JSON API. ``POST /api/predict`` takes an
image three ways, as people send one: a JSON body ``{"image": "<base64 or data: URL>"}``, the raw image
bytes (``Content-Type: image/png``, ``curl --data-binary @digit.png``) or a multipart upload
(``curl -F image=@digit.png``). Request bodies are capped at ``MAX_BODY_BYTES``; image dimensions are read
from the header and capped at ``MAX_SIDE`` pixels a side before anything is decoded; at most
``MAX_DECODES`` images are decoded at once. Every bad request gets a 4xx with a one-line message.
"""

import asyncio
import base64
import binascii
import html
import json
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from ..core import datasets
from ..errors import MnistlabError
from .predict import Classifier, ImageError, open_image, preprocess

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_SIDE = 2048
MAX_DECODES = 4  # concurrent image decodes: bounds memory under a flood of large images
BODY_TIMEOUT_S = 10.0  # a client that has not sent its whole body by then gets 408
HEADER_TIMEOUT_S = 10.0  # a connection whose first request's headers are not complete by then is closed


def _require() -> tuple[Any, Any]:
    try:
        import fastapi
        import pydantic
    except ImportError:
        raise MnistlabError("the web demo needs the 'serve' extra: pip install 'mnistlab[serve]'") from None
    return fastapi, pydantic


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes (declared or streamed, chunked included),
    408 for a body that does not arrive within ``timeout`` seconds."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES, timeout: float = BODY_TIMEOUT_S) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _reject(send, 413, f"request body too large (limit {self.limit} bytes)")
        seen = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout

        async def limited_receive() -> dict:
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise _Refused(408, f"request body not received within {self.timeout:g} s") from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _Refused(413, f"request body too large (limit {self.limit} bytes)")
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _Refused as e:
            await _reject(send, e.status, e.detail)


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _reject(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff")
REQUEST_BODY = {  # the OpenAPI description of the three ways to send an image
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "additionalProperties": False,
                "properties": {
                    "image": {
                        "type": "string",
                        "minLength": 1,
                        "description": "a PNG or JPEG, base64-encoded, optionally as a data: URL "
                        "(data:image/png;base64,...)",
                    }
                },
            }
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary", "description": "the image file"}},
            }
        },
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
    },
}


def _decode_base64(text: str) -> bytes:
    if text.startswith("data:"):
        if "," not in text:
            raise ValueError("image is not a valid data: URL (no comma before the data)")
        header, text = text.split(",", 1)
        if not header.endswith(";base64"):
            raise ValueError("a data: URL image must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image is not valid base64") from None


async def read_image_bytes(request: Any) -> bytes:
    """The image bytes of a request, whichever of the three forms it uses; ValueError names the problem."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            doc = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ValueError("body is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("image"), str):
            raise ValueError('JSON body must be an object with a string field "image"')
        return _decode_base64(doc["image"])
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4)
        except Exception as e:
            raise ValueError(
                f"malformed multipart body ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        part = form.get("image")
        if part is None or isinstance(part, str):
            raise ValueError('multipart body needs a file field named "image"')
        return await part.read()
    if ctype.startswith("image/"):
        return await request.body()
    if not ctype:
        raise _UnsupportedType("no Content-Type: send JSON, multipart/form-data or image/* bytes")
    raise _UnsupportedType(f"unsupported Content-Type {ctype!r}: send JSON, multipart/form-data or image/* bytes")


class _UnsupportedType(ValueError):
    pass


def create_app(run_dir: "str | Path", body_timeout: float = BODY_TIMEOUT_S) -> Any:
    """The web app for a trained run directory."""
    fastapi, _ = _require()
    import pydantic  # present: _require checked (a module-level name, so the response models can subclass it)
    from fastapi import HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    clf = Classifier.load(run_dir)
    page = _page(clf)
    decodes = asyncio.Semaphore(MAX_DECODES)

    class PredictResponse(pydantic.BaseModel):
        prediction: int = pydantic.Field(description="the most probable class's label (0-9 for digits)")
        label: str = pydantic.Field(description="the most probable class's name")
        classes: list[str] = pydantic.Field(description="the class names, by label")
        probabilities: list[float] = pydantic.Field(description="softmax probability of each class, by label")
        input: list[list[float]] = pydantic.Field(description="the 28x28 image the model saw, values in [0, 1]")
        unlike_digit: str | None = pydantic.Field(
            None, description="why the input is unlike any digit (unusual ink or low confidence), or null"
        )

    app = fastapi.FastAPI(
        title="mnistlab",
        version="1",
        docs_url=None,
        redoc_url=None,
        description="Handwritten-digit recognition with a model trained by mnistlab.",
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # never echo the body back: it may be bytes that do not encode (the default handler fails on them)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"invalid request: {where} {first.get('msg', '')}".strip()}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": Path(str(run_dir)).name, "dataset": clf.dataset}

    def classify(raw: bytes) -> PredictResponse:
        x = preprocess(open_image(raw, max_side=MAX_SIDE), "image", clf.frame)
        probs = clf.probabilities(x[None])[0]
        return PredictResponse(
            prediction=int(probs.argmax()),
            label=clf.classes[int(probs.argmax())],
            classes=list(clf.classes),
            probabilities=[round(float(p), 6) for p in probs],
            input=[[round(float(v), 3) for v in row] for row in x],
            unlike_digit=clf.note(x, probs),
        )

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        openapi_extra={"requestBody": REQUEST_BODY},
        responses={
            400: {"description": "not a readable image, or no digit in it"},
            408: {"description": "the body did not arrive in time"},
            413: {"description": "request or image too large"},
            415: {"description": "a Content-Type other than JSON, multipart or image/*"},
        },
    )
    async def predict(request: Request) -> PredictResponse:
        try:
            raw = await read_image_bytes(request)
        except _UnsupportedType as e:
            raise HTTPException(415, str(e)) from None
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        async with decodes:
            try:
                return await run_in_threadpool(classify, raw)
            except ImageError as e:
                status = 413 if "too large" in str(e) else 400
                raise HTTPException(status, str(e).removeprefix("<bytes>: ").removeprefix("image: ")) from None

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, timeout=body_timeout)
    return app


def _page(clf: Classifier) -> str:
    """The drawing page, headed with what the model knows (MNIST's page says "Draw a digit")."""
    page = resources.files("mnistlab").joinpath("web", "index.html").read_text(encoding="utf-8")
    if clf.classes == tuple("0123456789"):
        return page
    names = ", ".join(clf.classes) if len(clf.classes) <= 12 else f"{', '.join(clf.classes[:12])}, ..."
    what = html.escape(f"one of the {len(clf.classes)} classes of {clf.dataset} ({names})")
    spec = datasets.REGISTRY.get(clf.dataset)
    unlike = f"this does not look like any {spec.title if spec else clf.dataset} item: "  # not "a digit"
    return (
        page.replace("<title>mnistlab: draw a digit</title>", f"<title>mnistlab: {html.escape(clf.dataset)}</title>")
        .replace("<h1>Draw a digit</h1>", f"<h1>Draw: {html.escape(clf.dataset)}</h1>")
        .replace("Draw one digit (0-9)", f"Draw {what}")
        .replace('"this does not look like a digit: "', json.dumps(unlike).replace("</", "<\\/"))  # a JS string
    )


def header_timeout_protocol(seconds: float = HEADER_TIMEOUT_S) -> type:
    """uvicorn's h11 protocol, closing connections that have not sent a whole request head in ``seconds``
    (uvicorn itself times out only idle keep-alive connections, so a slow client could hold one forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.loop.call_later(seconds, self._close_if_no_request)

        def _close_if_no_request(self) -> None:
            if self.cycle is None and not self.transport.is_closing():  # no request head yet
                self.transport.close()

    return HeaderTimeout


def serve(run_dir: "str | Path", host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the web demo until Ctrl-C; the port is bound here first, so a busy one is a one-line error."""
    _require()
    import uvicorn

    app = create_app(run_dir)
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as e:
        raise MnistlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"mnistlab serve: http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, http=header_timeout_protocol())
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
