"""The Gradio demo for real: launched on 127.0.0.1, called with gradio_client, and driven once in headless Chromium."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from PIL import Image

from autotimm import BackboneConfig, ImageClassifier

pytest.importorskip("gradio")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CLASSES = ["zebra", "yak", "quokka"]


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A checkpoint, an image, and its demo running on a free local port."""
    from autotimm.serving.gradio_app import gradio_app

    root = tmp_path_factory.mktemp("demo")
    torch_model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), class_names=CLASSES).eval()
    checkpoint = torch_model.save(root / "pets.ckpt")
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(image)
    app = gradio_app(checkpoint, examples=[image], top_k=2)
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield {"url": url, "image": image, "model": ImageClassifier.load(checkpoint)}
    app.close()


def test_client_prediction_equals_model_predict(served):
    from gradio_client import Client, handle_file

    expected = served["model"].predict(served["image"], top_k=2)[0]
    result = Client(served["url"], verbose=False).predict(handle_file(str(served["image"])), api_name="/predict")
    assert result["label"] == expected.label
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert list(confidences) == expected.labels
    np.testing.assert_allclose(list(confidences.values()), expected.probabilities, atol=1e-6)


def test_grad_cam_endpoint_returns_an_overlay(served):
    from gradio_client import Client, handle_file

    path = Client(served["url"], verbose=False).predict(handle_file(str(served["image"])), api_name="/explain")
    overlay = np.asarray(Image.open(path))
    assert overlay.ndim == 3 and overlay.shape[2] in (3, 4) and overlay.std() > 0


def test_a_run_folder_gives_its_checkpoint_and_validation_examples(tmp_path):
    from autotimm.serving.gradio_app import load_demo_model, run_examples

    data = tmp_path / "data"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(data / name / f"{i}.png")
    run = tmp_path / "run"
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), class_names=CLASSES)
    model.save(run / "checkpoints" / "epoch=3-step=9.ckpt")
    val = [f"{c}/{i}.png" for c in CLASSES for i in range(2)]
    (run / "splits.json").write_text(json.dumps({"source": f"folder {data}", "splits": {"val": val, "train": []}}))
    loaded, name, examples = load_demo_model(run)
    assert name == "epoch=3-step=9.ckpt" and loaded.class_names == CLASSES
    assert [os.path.relpath(e, data) for e in examples] == ["zebra/0.png", "yak/0.png", "quokka/0.png", "zebra/1.png"]
    assert run_examples(tmp_path / "nothing") == []
    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="a run folder with no checkpoint yet"):
        load_demo_model(empty)


def test_page_shows_the_label_in_headless_chromium(served, tmp_path):
    from test_service_browser import CHROMEDRIVER, _require_browser, _screenshot

    browser = _require_browser()
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    expected = served["model"].predict(served["image"], top_k=2)[0].label
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(served["url"])
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys(str(served["image"]))
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".output-class"), expected))
        _screenshot(driver, tmp_path, "gradio_demo.png")
        assert driver.find_element(By.CSS_SELECTOR, ".output-class").text.strip() == expected
    finally:
        driver.quit()


def test_demo_command_refuses_a_bad_model(tmp_path, capsys):
    from autotimm.cli import main

    assert main(["demo", str(tmp_path / "missing.ckpt")]) == 1
    assert "does not exist" in capsys.readouterr().err
