"""``mnistlab serve``: draw a digit in the browser and see what the model sees and says.

A FastAPI app (OpenAPI at ``/openapi.json``) with one page and a JSON API. Request bodies are capped at
``MAX_BODY_BYTES`` and images at ``MAX_SIDE`` pixels a side; bad requests get a 4xx with a message.
"""


import base64
import binascii
from importlib import resources
from pathlib import Path

from .errors import MnistlabError
from .predict import Classifier, ImageError, open_image, preprocess

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_SIDE = 2048


def _require():
    try:
        import fastapi
        import pydantic
    except ImportError:
        raise MnistlabError("the web demo needs the 'serve' extra: pip install 'mnistlab[serve]'") from None
    return fastapi, pydantic


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message
        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send) -> None:
        body = b'{"detail":"request body too large (limit %d bytes)"}' % self.limit
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(run_dir: "str | Path"):
    """The web app for a trained run directory."""
    fastapi, pydantic = _require()
    from fastapi import HTTPException
    from fastapi.responses import HTMLResponse

    clf = Classifier.load(run_dir)
    page = resources.files("mnistlab").joinpath("web", "index.html").read_text(encoding="utf-8")

    class PredictRequest(pydantic.BaseModel):
        image: str = pydantic.Field(description="a PNG or JPEG, base64-encoded, optionally as a data: URL")

    class PredictResponse(pydantic.BaseModel):
        prediction: int = pydantic.Field(description="the most probable digit")
        probabilities: list[float] = pydantic.Field(description="softmax probability of each digit 0-9")
        input: list[list[float]] = pydantic.Field(description="the 28x28 image the model saw, values in [0, 1]")

    app = fastapi.FastAPI(title="mnistlab", version="1", docs_url=None, redoc_url=None,
                          description="Handwritten-digit recognition with a model trained by mnistlab.")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": Path(str(run_dir)).name}

    @app.post("/api/predict", response_model=PredictResponse,
              responses={400: {"description": "not a readable image, or no digit in it"},
                         413: {"description": "request or image too large"}})
    def predict(req: PredictRequest) -> PredictResponse:
        text = req.image.split(",", 1)[1] if req.image.startswith("data:") else req.image
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, "image is not valid base64") from None
        try:
            img = open_image(raw)
            if max(img.size) > MAX_SIDE:
                raise HTTPException(413, f"image too large ({img.width}x{img.height}; limit {MAX_SIDE} a side)")
            x = preprocess(img, "image")
        except ImageError as e:
            status = 413 if "too large" in str(e) else 400
            raise HTTPException(status, str(e).removeprefix("<bytes>: ").removeprefix("image: ")) from None
        probs = clf.probabilities(x[None])[0]
        return PredictResponse(prediction=int(probs.argmax()), probabilities=[round(float(p), 6) for p in probs],
                               input=[[round(float(v), 3) for v in row] for row in x])

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


def serve(run_dir: "str | Path", host: str = "127.0.0.1", port: int = 8000) -> None:
    _require()
    import uvicorn
    uvicorn.run(create_app(run_dir), host=host, port=port, log_level="info")
