"""The web demo: the JSON API and its limits, OpenAPI, and the page driven in headless Chromium."""

import base64
import io
import math
import shutil
import socket
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from mnistlab.deploy import serve


@pytest.fixture(scope="module")
def client(trained_run):
    return TestClient(serve.create_app(trained_run))


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png(arr: np.ndarray) -> str:
    return base64.b64encode(_png_bytes(arr)).decode()


def _dots() -> np.ndarray:
    """Ink that is two 1-pixel dots far apart: nothing survives scaling it to 20x20."""
    arr = np.zeros((2000, 2000), np.uint8)
    arr[5, 5] = arr[1990, 1990] = 255
    return arr


def _digit(mnist) -> np.ndarray:
    return 255 - np.asarray(Image.fromarray(mnist.test_images[0].numpy()).resize((200, 200)))


def test_predict_accepts_raw_image_bodies_and_multipart_uploads(client, mnist):
    png = _png_bytes(_digit(mnist))
    want = int(mnist.test_labels[0])
    raw = client.post("/api/predict", content=png, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["prediction"] == want
    multi = client.post("/api/predict", files={"image": ("digit.png", png, "image/png")})
    assert multi.status_code == 200 and multi.json()["prediction"] == want
    assert raw.json()["probabilities"] == multi.json()["probabilities"]


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"content": b"abc"}, 415, "no Content-Type"),
        ({"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "unsupported Content-Type"),
        ({"content": b"\xff\xfe not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"[1]", "headers": {"content-type": "application/json"}}, 400, 'string field "image"'),
        ({"content": b"garbage", "headers": {"content-type": "image/png"}}, 400, "not an image"),
        ({"files": {"other": ("x.png", b"abc", "image/png")}}, 400, 'file field named "image"'),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, None),
    ],
)
def test_malformed_bodies_get_4xx_not_500(client, kwargs, status, message):
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, r.text
    if message:
        assert message in r.json()["detail"]


def test_chunked_body_over_the_limit_gets_413(client):
    def chunks():
        for _ in range(serve.MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_predict_api(client, mnist):
    arr = 255 - np.asarray(Image.fromarray(mnist.test_images[0].numpy()).resize((200, 200)))
    r = client.post("/api/predict", json={"image": "data:image/png;base64," + _png(arr)})
    assert r.status_code == 200
    body = r.json()
    assert body["prediction"] == int(mnist.test_labels[0]) and len(body["probabilities"]) == 10
    assert np.array(body["input"]).shape == (28, 28) and abs(sum(body["probabilities"]) - 1) < 1e-3


@pytest.mark.parametrize(
    "payload, status, message",
    [
        ({"image": "%%%"}, 400, "not valid base64"),
        ({"image": base64.b64encode(b"plain text").decode()}, 400, "not an image"),
        ({"image": _png(np.full((50, 50), 255, np.uint8))}, 400, "no digit found"),
        ({"image": _png(np.zeros((3000, 10), np.uint8))}, 413, "too large"),
        ({"picture": "x"}, 400, 'string field "image"'),
        ({"image": "data:"}, 400, "not a valid data: URL"),
        ({"image": "data:image/png;base64"}, 400, "not a valid data: URL"),
        ({"image": "data:image/png,abc"}, 400, "must be base64-encoded"),
        ({"image": _png(_dots())}, 400, "no digit found"),
        ({"image": _png(np.zeros((6300, 6300), np.uint8))}, 413, "6300x6300"),
    ],
)
def test_bad_requests_get_4xx(client, payload, status, message):
    r = client.post("/api/predict", json=payload)
    assert r.status_code == status
    if message:
        assert message in r.json()["detail"]


def test_body_size_limit(client):
    r = client.post(
        "/api/predict",
        content=b"{" + b" " * (serve.MAX_BODY_BYTES + 10) + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_openapi_describes_the_api(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/api/predict", "/api/health"}
    post = spec["paths"]["/api/predict"]["post"]
    assert {"413", "415"} <= set(post["responses"])
    content = post["requestBody"]["content"]
    assert content["application/json"]["schema"]["properties"]["image"]["type"] == "string"
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert content["image/png"]["schema"]["format"] == "binary"
    assert client.get("/api/health").json()["status"] == "ok"
    page = client.get("/").text
    assert "<canvas" in page and "http://" not in page and "https://" not in page  # works offline
    assert "this does not look like a digit: " in page  # an MNIST model: digits (other datasets: their items)


def test_cli_binds_to_loopback_by_default(trained_run, monkeypatch):
    from mnistlab.cli import main

    seen = {}
    monkeypatch.setattr(serve, "serve", lambda run_dir, host, port: seen.update(host=host, port=port))
    assert main(["serve", "--model", str(trained_run)]) == 0
    assert seen == {"host": "127.0.0.1", "port": 8000}


def test_serve_on_a_busy_port_is_one_line(trained_run):
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "mnistlab", "serve", "--model", str(trained_run), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "in use" in r.stderr


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server_url(trained_run):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(serve.create_app(trained_run), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_slow_clients_are_cut_off(trained_run):
    """A body that never arrives gets 408; headers that never end get the connection closed."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            serve.create_app(trained_run, body_timeout=1.0),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            http=serve.header_timeout_protocol(1.0),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            c.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"x" * 10
            )  # 10 of 1,000 bytes, then silence
            start = time.time()
            reply = b""
            while chunk := c.recv(4096):  # to the server's close: headers and body may come in two segments
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in reply
        assert time.time() - start < 10
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            c.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            start = time.time()
            assert c.recv(4096) == b""  # closed by the server
        assert time.time() - start < 10
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:  # normal requests still work
            c.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(10)


SHAPES = {  # strokes on the 280x280 pad
    1: [[(140, 40), (140, 240)]],
    0: [[(140 + 70 * math.sin(t / 24 * 2 * math.pi), 140 - 95 * math.cos(t / 24 * 2 * math.pi)) for t in range(25)]],
    7: [[(70, 50), (210, 50), (120, 240)]],
}


def test_draw_a_digit_in_headless_chromium(server_url):
    """Drives the real page with the mouse in Debian's Chromium (installed by .ci/run) and reads the answer."""
    from playwright.sync_api import sync_playwright

    assert shutil.which("chromium") or __import__("os").path.exists(CHROMIUM), (
        "Debian's chromium is needed for the browser test: apt-get install chromium"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server_url + "/")
        box = page.locator("#pad").bounding_box()
        for digit, strokes in SHAPES.items():
            page.click("#clear")
            assert page.text_content("#prediction") == ""
            for stroke in strokes:
                page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
                page.mouse.down()
                for x, y in stroke[1:]:
                    page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
                page.mouse.up()
            page.wait_for_function("document.getElementById('prediction').textContent !== ''", timeout=15000)
            assert page.text_content("#prediction") == str(digit)
            assert page.locator("#probs .bar").count() == 10
            assert page.locator(f"#probs .bar.top[data-digit='{digit}']").count() == 1
        # the 28x28 input the model saw is drawn: not all black
        lit = page.evaluate("""() => { const c = document.getElementById('seen').getContext('2d');
            const d = c.getImageData(0, 0, 140, 140).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] > 100) n++; return n; }""")
        assert lit > 100
        browser.close()


def test_serve_command_runs_a_server(trained_run):
    """`mnistlab serve` as a user starts it: a process answering on loopback until stopped."""
    import json
    import signal
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "serve", "--model", str(trained_run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, health = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.3)
        assert health == {"status": "ok", "model": trained_run.name, "dataset": "mnist"}
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out


def test_canvas_export_of_white_strokes_on_transparent_is_read(client):
    """A canvas exported with white strokes on a transparent background (the strokes live in the alpha
    channel) was a 400 "no digit found"; it reads as the same digit as black strokes on white."""
    from PIL import ImageDraw

    pad = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(pad).line([(70, 50), (210, 50), (120, 240)], fill=255, width=22, joint="curve")
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 255, np.asarray(pad)
    answers = []
    for arr in (rgba, 255 - np.asarray(pad)):  # the canvas export, and the easy case: black on white
        r = client.post("/api/predict", json={"image": "data:image/png;base64," + _png(arr)})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert [a["prediction"] for a in answers] == [7, 7]
    np.testing.assert_allclose(answers[0]["input"], answers[1]["input"], atol=0.01)
