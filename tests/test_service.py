"""The REST service: every endpoint and error case with TestClient, micro-batching, and a real uvicorn server."""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import re
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import jpeg, photo, png_header
from PIL import Image

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import make_data_config
from autotimm.prediction.predict import Prediction

# The service's own dependencies are the serve extra: without it this module (and test_service_browser) skips.
httpx = pytest.importorskip("httpx", reason="the service needs the serve extra: pip install 'autotimm[serve]'")
pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'autotimm[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from autotimm.serving.app import DEFAULT_MAX_IMAGE_PIXELS, create_app, decode_upload, serve_in_thread  # noqa: E402
from autotimm.serving.batching import MicroBatcher  # noqa: E402

CLASSES = ["tabby cat", "golden retriever", "red fox"]
LIMIT = 64 * 1024  # max_upload_bytes of the test apps
ROOT = Path(__file__).resolve().parents[1]


def build_model() -> ImageClassifier:
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=3, class_names=CLASSES)
    model.apply_data_info(CLASSES, make_data_config(model.backbone, 3, 32))
    with torch.no_grad():
        model.head.fc.weight.mul_(20)  # spread the probabilities, so that orders are not decided by rounding
    return model.eval()


def png(seed: int, size: tuple[int, int] = (40, 48), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def expected(model, data: bytes, top_k: int) -> Prediction:
    return model.predict(Image.open(io.BytesIO(data)), top_k=top_k)[0]


def assert_same(result: dict, prediction: Prediction) -> None:
    assert [p["label"] for p in result["predictions"]] == prediction.labels
    np.testing.assert_allclose([p["probability"] for p in result["predictions"]], prediction.probabilities, atol=1e-4)


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("service") / "pets.ckpt")


@pytest.fixture(scope="module")
def client(checkpoint):
    app = create_app(checkpoint, top_k=2, max_upload_bytes=LIMIT, max_batch_images=4, batch_window_ms=2)
    with TestClient(app) as test_client:
        yield test_client


class Flaky:
    """A loaded 'model' of another kind, which fails on demand."""

    def __init__(self, model):
        self.model, self.class_names, self.fail = model, model.class_names, False

    def predict(self, images, **kwargs):
        if self.fail:
            raise RuntimeError("secret internal detail")
        return self.model.predict(images, **kwargs)


@pytest.fixture(scope="module")
def flaky(model):
    wrapper = Flaky(model)
    with TestClient(create_app(wrapper, max_image_pixels=2000)) as test_client:
        yield wrapper, test_client


# ------------------------------------------------------------------ endpoints
def test_predict_returns_the_models_top_k(client, model):
    data = png(1)
    response = client.post("/predict", files={"file": ("cat.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "cat.png"
    assert len(body["predictions"]) == 2  # the app's default top_k
    assert_same(body, expected(model, data, 2))
    response = client.post("/predict?top_k=3", files={"file": ("cat.png", data, "image/png")})
    assert_same(response.json(), expected(model, data, 3))
    gray = png(2, mode="L")  # converted to the model's channels
    response = client.post("/predict?top_k=1", files={"file": ("gray.png", gray, "application/octet-stream")})
    assert_same(response.json(), expected(model, gray, 1))


def test_predict_batch_keeps_the_order(client, model):
    images = [png(seed, size=(30 + seed, 40)) for seed in range(3)]
    files = [("files", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = client.post("/predict/batch?top_k=3", files=files)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["filename"] for r in results] == ["img0.png", "img1.png", "img2.png"]
    for result, data in zip(results, images, strict=True):
        assert_same(result, expected(model, data, 3))


def test_health_and_labels(client):
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"] == "pets.ckpt" and health["model_type"] == "ImageClassifier"
    assert health["backbone"] == "resnet18" and health["num_classes"] == 3 and health["multi_label"] is False
    assert health["input_size"] == [3, 32, 32] and health["top_k"] == 2
    assert health["max_upload_bytes"] == LIMIT and health["max_batch_images"] == 4
    assert health["uptime_s"] >= 0 and health["batching"]["batches"] >= 1
    assert isinstance(health["batching"]["batches"], int) and health["batching"]["max_batch_size"] == 16
    assert client.get("/labels").json() == {"labels": CLASSES, "multi_label": False}


def test_openapi_docs(client):
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/labels"} <= set(schema["paths"])
    assert "413" in schema["paths"]["/predict"]["post"]["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()


def test_page_has_no_external_assets(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<script>" in page and "<style>" in page and 'type="file"' in page
    assert "<script src" not in page and 'rel="stylesheet"' not in page
    links = re.findall(r"\s(?:src|href)=[\"']([^\"']*)", page)
    assert links and all(link in ("docs", "health", "labels", "data:,") for link in links), links
    assert not re.search(r"https?://|//cdn|@import", page, re.IGNORECASE)
    assert not re.search(r"\burl\(", page)  # CSS url(...); the script's URL.createObjectURL makes local blob: URLs


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("data", "content_type", "status", "words"),
    [
        (b"just some text, not a picture", "text/plain", 415, "is not an image"),
        (png(3)[:120], "image/png", 400, "corrupt or truncated PNG"),
        (b"", "image/png", 400, "is empty"),
        (b"\x89PNG" + bytes(LIMIT), "image/png", 413, "larger than the upload limit of 64 KiB"),
    ],
)
def test_bad_uploads_get_clear_errors(client, data, content_type, status, words):
    response = client.post("/predict", files={"file": ("upload.bin", data, content_type)})
    assert response.status_code == status
    detail = response.json()["detail"]
    assert words in detail and "upload.bin" in detail and "Traceback" not in response.text


def test_a_bad_file_in_a_batch_is_named(client):
    files = [("files", ("good.png", png(4), "image/png")), ("files", ("notes.txt", b"hello", "text/plain"))]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 415 and "'notes.txt' is not an image" in response.json()["detail"]


def test_too_many_images_in_a_batch(client):
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(5)]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 413 and "5 images in one request; the limit is 4" in response.json()["detail"]


def test_request_body_over_the_limit(client):
    big = b"\x89PNG" + bytes(3 * LIMIT)
    response = client.post("/predict", files={"file": ("big.png", big, "image/png")})  # with a Content-Length
    assert response.status_code == 413 and "request body is larger than the limit" in response.json()["detail"]
    # Without a Content-Length (chunked): counted as it arrives.
    request = httpx.Request("POST", "http://testserver/predict", files={"file": ("big.png", big, "image/png")})
    body = request.read()
    chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
    response = client.post("/predict", content=chunks, headers={"content-type": request.headers["content-type"]})
    assert response.status_code == 413 and "request body is larger" in response.json()["detail"]


@pytest.mark.parametrize(("query", "words"), [("top_k=0", "from 1 to 3"), ("top_k=4", "from 1 to 3"), ("top_k=x", "")])
def test_bad_top_k(client, query, words):
    response = client.post(f"/predict?{query}", files={"file": ("a.png", png(5), "image/png")})
    assert response.status_code == 422 and words in str(response.json()["detail"])


def test_missing_field(client):
    assert client.post("/predict", files={"image": ("a.png", png(6), "image/png")}).status_code == 422
    missing = client.post("/predict")
    assert missing.status_code == 422
    assert isinstance(missing.json()["detail"], str) and "multipart form fields" in missing.json()["detail"]
    assert client.post("/predict/batch", files={"file": ("a.png", png(6), "image/png")}).status_code == 422


def test_too_many_pixels(flaky):
    _, test_client = flaky
    response = test_client.post("/predict", files={"file": ("wide.png", png(7, size=(100, 30)), "image/png")})
    assert response.status_code == 413 and "100x30 pixels; the limit is 2,000" in response.json()["detail"]


def test_unexpected_errors_are_logged_not_leaked(flaky, caplog):
    wrapper, test_client = flaky
    health = test_client.get("/health").json()
    assert health["model_type"] == "Flaky" and health["backbone"] is None and health["top_k"] == 3
    wrapper.fail = True
    try:
        with caplog.at_level(logging.ERROR, logger="autotimm.serving.app"):
            response = test_client.post("/predict", files={"file": ("a.png", png(8, size=(20, 20)), "image/png")})
    finally:
        wrapper.fail = False
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error; the details are in the server log."}
    assert "secret" not in response.text and "secret internal detail" in caplog.text and "Traceback" in caplog.text
    ok = test_client.post("/predict", files={"file": ("a.png", png(8, size=(20, 20)), "image/png")})
    assert ok.status_code == 200  # the service goes on


def test_decode_upload_directly():
    assert decode_upload(png(9), "a.png", 10_000).size == (40, 48)


# ------------------------------------------------------------------ loading and arguments
@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    from autotimm.exporting.exporter import export

    path = tmp_path_factory.mktemp("service_onnx") / "pets.onnx"
    export(model, path, check_samples=2)
    return path


def test_onnx_model(model, onnx_file):
    with TestClient(create_app(onnx_file, top_k=3)) as test_client:
        assert test_client.get("/health").json()["model_type"] == "OnnxPredictor"
        data = png(10)
        response = test_client.post("/predict", files={"file": ("x.png", data, "image/png")})
        assert_same(response.json(), expected(model, data, 3))


def test_onnx_service_runs_without_torch(onnx_file):
    script = textwrap.dedent(
        f"""
        import io, sys
        for name in ("torch", "torchvision", "timm", "pytorch_lightning", "lightning", "torchmetrics"):
            sys.modules[name] = None  # any import of these now raises ImportError
        from fastapi.testclient import TestClient
        from PIL import Image
        from autotimm.serving.app import create_app

        image = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 90, 10)).save(image, format="PNG")
        with TestClient(create_app({str(onnx_file)!r})) as client:
            response = client.post("/predict", files={{"file": ("a.png", image.getvalue(), "image/png")}})
        assert all(sys.modules[name] is None for name in ("torch", "timm", "pytorch_lightning"))
        print(response.status_code, len(response.json()["predictions"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200 3", done.stdout


def test_bad_arguments(tmp_path, checkpoint):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.ckpt checkpoint, an \.onnx file"):
        create_app(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        create_app(tmp_path / "missing.ckpt")
    with pytest.raises(TypeError, match="got a dict"):
        create_app({})
    for name, value in [("top_k", 0), ("max_upload_bytes", -1), ("max_batch_images", 1.5), ("max_batch_size", 0)]:
        with pytest.raises(ValueError, match=re.escape(f"`{name}` must be an int >= 1, got {value!r}")):
            create_app(checkpoint, **{name: value})
    with pytest.raises(ValueError, match="`batch_window_ms`"):
        create_app(checkpoint, batch_window_ms=-1)


# ------------------------------------------------------------------ micro-batching
def fake_predict(calls):
    def predict(images, top_k):
        calls.append(len(images))
        return [Prediction([f"img{i}", "b", "c"], [0.7, 0.2, 0.1], [0, 1, 2]) for i in images]

    return predict


def test_micro_batcher_groups_concurrent_requests():
    calls: list[int] = []

    async def main():
        batcher = MicroBatcher(fake_predict(calls), max_batch_size=4, batch_window_ms=100)
        await batcher.start()
        try:
            singles = [batcher.submit([i], top_k=1 + i % 3) for i in range(7)]
            group = batcher.submit([7, 8, 9, 10, 11], top_k=2)  # larger than a batch: runs alone, not split
            return await asyncio.gather(*singles, group), batcher.stats
        finally:
            await batcher.close()

    results, stats = asyncio.run(main())
    assert calls == [4, 3, 5]
    for i, [prediction] in enumerate(results[:7]):
        assert prediction.labels == [f"img{i}", "b", "c"][: 1 + i % 3]  # each request gets its own top-k
    assert [p.labels for p in results[7]] == [[f"img{i}", "b"] for i in range(7, 12)]
    assert (stats.batches, stats.images, stats.largest) == (3, 12, 5)


def test_micro_batcher_window_waits_only_for_requests_on_their_way():
    calls: list[int] = []

    async def main():
        batcher = MicroBatcher(fake_predict(calls), max_batch_size=8, batch_window_ms=2000)
        await batcher.start()
        try:
            start = time.monotonic()
            await batcher.submit([0], top_k=1)  # alone: no window
            alone = time.monotonic() - start

            async def late(i: int, delay: float):
                with batcher.preparing():  # e.g. decoding its upload
                    await asyncio.sleep(delay)
                    future = batcher.enqueue([i], top_k=1)
                return await future

            async def early():
                await asyncio.sleep(0.01)  # queued while the others are still preparing
                return await batcher.submit([1], top_k=1)

            start = time.monotonic()
            await asyncio.gather(early(), late(2, 0.1), late(3, 0.15))
            together = time.monotonic() - start
        finally:
            await batcher.close()
        return alone, together

    alone, together = asyncio.run(main())
    assert calls == [1, 3]  # the early request waited for the two on their way...
    assert alone < 0.5 and together < 1.0  # ...but not for the whole 2 s window


def test_micro_batcher_errors_reach_every_request_of_the_batch():
    def predict(images, top_k):
        if "bad" in images:
            raise RuntimeError("model failed")
        return [Prediction(["ok"], [1.0], [0]) for _ in images]

    async def main():
        batcher = MicroBatcher(predict, max_batch_size=2, batch_window_ms=50)
        await batcher.start()
        try:
            first = await asyncio.gather(batcher.submit(["a"], 1), batcher.submit(["bad"], 1), return_exceptions=True)
            second = await batcher.submit(["c"], 1)
        finally:
            await batcher.close()
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(["d"], 1)
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "model failed" in str(r) for r in first)
    assert second[0].labels == ["ok"]


# ------------------------------------------------------------------ a real server
def test_real_server_under_concurrent_requests(checkpoint, model):
    images = [png(20 + i, size=(32 + 3 * i, 36)) for i in range(6)]
    references = [expected(model, data, 3) for data in images]
    app = create_app(checkpoint, top_k=3, max_upload_bytes=LIMIT, batch_window_ms=50, max_batch_size=8)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as http:

        def call(i: int) -> tuple[int, httpx.Response]:
            data = images[i % len(images)]
            return i, http.post("/predict", files={"file": (f"img{i}.png", data, "image/png")})

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(call, range(36)))
        for i, response in responses:
            assert response.status_code == 200, response.text
            assert response.json()["filename"] == f"img{i}.png"
            assert_same(response.json(), references[i % len(images)])
        batching = http.get("/health").json()["batching"]
        assert batching["images"] >= 36 and batching["largest"] >= 2  # concurrent requests shared model calls
        big = http.post("/predict", files={"file": ("big.png", bytes(3 * LIMIT), "image/png")})
        assert big.status_code == 413 and "larger than the limit" in big.json()["detail"]
        assert http.get("/health").status_code == 200  # still up


# ------------------------------------------------------------------ big images, decode slots, content types
@pytest.fixture(scope="module")
def server(checkpoint):
    """A real uvicorn server on 127.0.0.1 with the default pixel limit and one decode at a time."""
    app = create_app(checkpoint, top_k=3, max_batch_images=8, max_concurrent_decodes=1)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http


def decoding(http: httpx.Client) -> dict:
    return http.get("/health").json()["decoding"]


def test_the_pixel_limit_is_checked_on_the_header_and_named(server):
    assert server.get("/health").json()["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS == 40_000_000
    # A real 9000x9000 PNG: 230 KB, well under the upload limit, that would take 320 MB decoded.
    buffer = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(buffer, format="PNG")
    response = server.post("/predict", files={"file": ("huge.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413
    assert response.json()["detail"] == "'huge.png' is 9000x9000 pixels; the limit is 40,000,000 pixels (PNG)"
    # Refused from the header alone: this file's pixel data is truncated, and decoding it would answer 400.
    response = server.post("/predict", files={"file": ("fake.png", png_header(9000, 9000), "image/png")})
    assert response.status_code == 413 and "9000x9000 pixels; the limit is 40,000,000" in response.json()["detail"]
    small = server.post("/predict", files={"file": ("fake.png", png_header(300, 200), "image/png")})
    assert small.status_code == 400 and "truncated PNG" in small.json()["detail"]  # under the limit: decoded
    # Far over Pillow's own limit too: still a 413 that names ours.
    response = server.post("/predict", files={"file": ("bomb.png", png_header(30_000, 30_000), "image/png")})
    assert response.status_code == 413
    assert "'bomb.png' has more pixels than the limit of 40,000,000 pixels" in response.json()["detail"]
    assert "900000000 pixels" in response.json()["detail"]  # its size, in Pillow's words


def test_a_smaller_pixel_limit(checkpoint):
    app = create_app(checkpoint, max_image_pixels=1_000_000)
    with serve_in_thread(app) as url:
        ok = httpx.post(f"{url}/predict", files={"file": ("a.jpg", jpeg(photo(1000)), "image/jpeg")}, timeout=60)
        big = httpx.post(f"{url}/predict", files={"file": ("b.jpg", jpeg(photo(1001)), "image/jpeg")}, timeout=60)
    assert ok.status_code == 200, ok.text
    assert big.status_code == 413 and big.json()["detail"] == (
        "'b.jpg' is 1001x1001 pixels; the limit is 1,000,000 pixels (JPEG)"
    )


def test_big_jpegs_are_decoded_reduced_with_nearly_the_same_prediction(server, model):
    health = server.get("/health").json()
    assert health["decoding"]["draft_size"] == list(model.preprocessor.draft_size)
    before = decoding(server)
    for side in (1024, 2048, 4000):
        data = jpeg(photo(side))
        response = server.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")})
        assert response.status_code == 200, response.text
        full = expected(model, data, 3)  # the model on the fully decoded image
        assert [p["label"] for p in response.json()["predictions"]] == full.labels
        np.testing.assert_allclose(
            [p["probability"] for p in response.json()["predictions"]], full.probabilities, atol=0.02
        )
    after = decoding(server)
    assert after["decodes"] - before["decodes"] == 3 and after["reduced"] - before["reduced"] == 3
    # A JPEG near the model's size and a PNG are decoded in full: the prediction is the model's own, exactly.
    for name, data in (("small.jpg", jpeg(photo(100))), ("big.png", png(11, size=(800, 600)))):
        response = server.post("/predict", files={"file": (name, data, "image/png")})
        assert_same(response.json(), expected(model, data, 3))
    assert decoding(server)["reduced"] == after["reduced"]


def test_decodes_wait_for_a_free_slot(server, checkpoint):
    # Eight images in one batch request: the service decodes them concurrently, as far as its slots allow.
    files = [("files", (f"{i}.png", png(i, size=(1200, 1000 + i)), "image/png")) for i in range(8)]
    before = decoding(server)
    response = server.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    after = decoding(server)
    assert after["max_concurrent_decodes"] == 1 and after["decodes"] - before["decodes"] == 8
    assert after["peak"] == 1 and after["active"] == 0  # one at a time, counted in the decoding threads
    # The same counter sees the decodes overlap when there are slots for them.
    with serve_in_thread(create_app(checkpoint, max_concurrent_decodes=4)) as url:
        wide = httpx.post(f"{url}/predict/batch", files=files, timeout=120)
        stats = httpx.get(f"{url}/health").json()["decoding"]
    assert wide.status_code == 200 and wide.json() == response.json()
    assert stats["max_concurrent_decodes"] == 4 and 2 <= stats["peak"] <= 4


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_the_declared_content_type_does_not_matter(server, kind):
    data = png(12, size=(64, 48)) if kind == "png" else jpeg(photo(600))
    declared = ["image/png", "image/jpeg", "text/plain", "application/octet-stream", "application/pdf"]
    answers = []
    for content_type in declared:
        response = server.post("/predict", files={"file": ("upload", data, content_type)})
        assert response.status_code == 200, (content_type, response.text)
        answers.append(response.json())
    # No content type at all (a bare multipart field), and a misleading file name.
    boundary = "autotimm-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    bare = server.post("/predict", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert bare.status_code == 200, bare.text
    answers.append(bare.json())
    assert all(answer == answers[0] for answer in answers), answers
    named = server.post("/predict", files={"file": ("upload", data, "image/png")})
    assert named.json() == answers[0]
    # Text declared as an image is still not an image: the bytes decide.
    text = server.post("/predict", files={"file": ("cat.png", b"not a picture", "image/png")})
    assert text.status_code == 415 and "'cat.png' is not an image" in text.json()["detail"]


def test_the_page_and_health_name_the_model_not_its_class(model, onnx_file):
    from autotimm.prediction.onnx_predictor import OnnxPredictor

    with TestClient(create_app(OnnxPredictor(onnx_file))) as test_client:  # what `autotimm serve` passes
        assert test_client.get("/health").json()["model"] == "pets.onnx"
        assert test_client.app.title == "autotimm: pets.onnx"
    with TestClient(create_app(model, name="pets v2")) as test_client:
        assert test_client.get("/health").json()["model"] == "pets v2"
    with TestClient(create_app(model)) as test_client:  # in memory, no file: its type is all there is
        assert test_client.get("/health").json()["model"] == "ImageClassifier"
    with pytest.raises(ValueError, match=r"`name` must be a non-empty string or None, got ''"):
        create_app(model, name="")
    with pytest.raises(ValueError, match=re.escape("`max_concurrent_decodes` must be an int >= 1, got 0")):
        create_app(model, max_concurrent_decodes=0)


def test_autotimm_serve_options(checkpoint):
    """``autotimm serve`` started for real: it names the file, and passes the pixel and decode limits."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "autotimm.cli",
        "serve",
        str(checkpoint),
        "--port",
        str(port),
        "--max-image-pixels",
        "1000000",
        "--max-concurrent-decodes",
        "3",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "autotimm serve did not start"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert health["model"] == "pets.ckpt"  # not "ImageClassifier", the class of the model it loaded
    assert health["max_image_pixels"] == 1_000_000 and health["decoding"]["max_concurrent_decodes"] == 3


def test_the_cli_defaults_are_the_services():
    from autotimm.cli.serve import ServeConfig

    defaults = {name: p.default for name, p in inspect.signature(create_app).parameters.items()}
    config = ServeConfig(ckpt="model.ckpt")
    for option in (
        "top_k",
        "max_upload_bytes",
        "max_image_pixels",
        "max_concurrent_decodes",
        "max_batch_size",
        "batch_window_ms",
        "device",
    ):
        assert getattr(config, option) == defaults[option], option
