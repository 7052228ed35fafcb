"""The Ray Serve app (serving/, launched by serving/app.py) over real HTTP on a loopback port, with an untrained export.

Serve starts once for the module; the model deployment has one replica, small queues (so overload
shows) and a long batch wait (so two concurrent requests reliably share a batch). The replica-kill
test SIGKILLs that replica late in the module; Serve restarts it before the test ends.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from invisible_face.params import PROJECT_ROOT

MAX_UPLOAD, MAX_PIXELS = 3_000_000, 3_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fast_copy(stem: Path, dst: Path) -> Path:
    """The export with a short region search and one DP neighbour (where the export has those
    settings): I/O tests, not quality."""
    config = json.loads(stem.with_suffix(".json").read_text())
    if "regions" in config:
        config["regions"].update(t_max=1.0, t_min=0.5, restarts=1)
    if "n_neighbours" in config.get("directions", {}):
        config["directions"]["n_neighbours"] = 1
    dst.with_suffix(".json").write_text(json.dumps(config))
    shutil.copy(stem.with_suffix(".safetensors"), dst.with_suffix(".safetensors"))
    return dst


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_protector, tmp_path_factory) -> str:
    from ray import serve

    from serving.app import from_config

    model = fast_copy(Path(tiny_protector), tmp_path_factory.mktemp("fast") / "protector")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app, _ = from_config(args={"model": str(model), "max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS,
                               "batch_wait_timeout_s": 0.3},
                         options={"ProtectorModel": {"num_replicas": 1, "max_ongoing_requests": 2,
                                                     "max_queued_requests": 4}})
    serve.run(app, name="invisible-face", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


# ------------------------------------------------------------------------------- photos

def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture(scope="module")
def face(photos) -> Image.Image:
    """A 300 x 240 photo with one face of about 90 px (a composed one): quick to protect."""
    with Image.open(photos / "portrait.jpg") as img:
        return img.convert("RGB")


def post(url: str, data: bytes, path: str = "/protect", name: str = "photo.jpg", **params) -> requests.Response:
    return requests.post(url + path, files={"file": (name, data)}, params=params, timeout=120)


def faces_header(response: requests.Response) -> dict:
    return json.loads(response.headers["X-Faces"])


# ------------------------------------------------------------------------------- endpoints

def test_healthz_reports_a_warm_model(url):
    r = requests.get(url + "/healthz", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["warm"] is True and body["model"].endswith("protector")
    assert body["target"] == {"available": True, "name": "target_tiny", "arch": "vgg11_bn_small", "input_size": 32}


def test_openapi_schema_lists_the_endpoints(url):
    schema = requests.get(url + "/openapi.json", timeout=30).json()
    assert {"/protect", "/analyze", "/healthz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/protect"]["post"]["requestBody"]["content"]


def test_page_is_served(url):
    r = requests.get(url + "/", timeout=30)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="file"' in r.text and "analyze?image=true" in r.text


def test_protect_returns_the_same_format_with_face_records(url, face):
    r = post(url, encode(face, "JPEG", quality=95))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    out = decode(r.content)
    assert out.format == "JPEG" and out.size == face.size
    summary = faces_header(r)
    assert summary["status"] == "protected" and len(summary["faces"]) == 1
    assert {"box", "region", "path", "predicted_before", "predicted_after"} <= set(summary["faces"][0])
    assert summary["faces"][0]["path"] in ("generator", "refined", "not_protected")


def test_protect_json_carries_the_image(url, face):
    r = post(url, encode(face, "PNG"), format="json")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "protected" and body["media_type"] == "image/png"
    out = np.asarray(decode(base64.b64decode(body["image_base64"])))
    diff = np.abs(out.astype(int) - np.asarray(face).astype(int))
    x0, y0, x1, y1 = (round(v) for v in body["faces"][0]["region"])
    assert diff.max() <= 24 + 1  # the perceptual budget's hard ceiling, 24/255 (smooth skin gets far less)
    outside = diff.copy()
    outside[y0:y1 + 1, x0:x1 + 1] = 0
    assert outside.max() == 0  # PNG is lossless: only the region changed


def test_analyze_gives_surrogate_and_target_predictions_before_and_after(url, face):
    r = post(url, encode(face, "JPEG"), path="/analyze")
    assert r.status_code == 200
    body = r.json()
    assert body["target"]["available"] is True and body["target"]["name"] == "target_tiny"
    for model in ("surrogate", "target"):
        preds = body["faces"][0][model]
        for attr, classes in body["attributes"].items():
            assert preds["before"][attr] in classes and preds["after"][attr] in classes
        assert set(preds["changed"]) <= set(body["attributes"])
    assert body["faces"][0]["path"] in ("generator", "refined", "not_protected")
    assert "image_base64" not in body and body["strength"] == "standard"


def test_strength_is_a_request_parameter_and_unknown_presets_are_refused(url, face):
    light = post(url, encode(face, "JPEG"), path="/analyze", strength="light")
    assert light.status_code == 200 and light.json()["strength"] == "light" and light.json()["faces"]
    wrong = post(url, encode(face, "JPEG"), strength="max")
    assert wrong.status_code == 422 and "strength" in wrong.text


# ------------------------------------------------------------------------------- input kinds

def test_no_face_comes_back_unchanged(url):
    pixels = np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (150, 1, 3))
    r = post(url, encode(Image.fromarray(pixels), "PNG"))
    assert r.status_code == 200 and faces_header(r) == {"status": "no_face", "faces": []}
    assert np.array_equal(np.asarray(decode(r.content)), pixels)


def test_exif_rotation_applied_and_metadata_stripped(url, face):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    exif[0x010F] = "CameraMaker"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 30.0)  # GPS latitude
    stored = face.transpose(Image.Transpose.ROTATE_90)
    r = post(url, encode(stored, "JPEG", exif=exif.tobytes()))
    assert r.status_code == 200 and faces_header(r)["status"] == "protected"
    out = decode(r.content)
    assert out.size == face.size  # upright
    assert not out.getexif() and "exif" not in out.info and b"GPS" not in r.content
    assert b"CameraMaker" not in r.content


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "cmyk", "png16"])
def test_unusual_modes(url, face, kind):
    img, fmt = {"grayscale": (face.convert("L"), "JPEG"), "rgba": (face.convert("RGBA"), "PNG"),
                "cmyk": (face.convert("CMYK"), "JPEG"),
                "png16": (Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257), "PNG")}[kind]
    if kind == "rgba":
        img.putalpha(Image.fromarray(np.full(face.size[::-1], 200, np.uint8)))
    r = post(url, encode(img, fmt))
    assert r.status_code == 200, r.text
    out = decode(r.content)
    assert out.format == fmt and out.size == face.size
    assert faces_header(r)["status"] in ("protected", "no_face")
    if kind == "rgba":
        assert out.mode == "RGBA" and np.asarray(out)[:, :, 3].min() == 200


def test_many_faces(url, face):
    grid = Image.new("RGB", (face.width * 3, face.height * 2))
    for i in range(6):
        grid.paste(face, ((i % 3) * face.width, (i // 3) * face.height))
    r = post(url, encode(grid, "JPEG"), format="json")
    assert r.status_code == 200
    assert r.json()["status"] == "protected" and len(r.json()["faces"]) == 6


def test_content_is_sniffed_not_named(url, face):
    r = post(url, encode(face, "PNG"), name="photo.jpg")  # PNG bytes under a .jpg name
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    raw = requests.post(url + "/protect", data=encode(face, "PNG"),
                        headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert raw.status_code == 200 and decode(raw.content).format == "PNG"


# ------------------------------------------------------------------------------- bad input

def animation(face: Image.Image, fmt: str, frames: int = 3) -> bytes:
    """``frames`` frames of the face, a little darker each time, as an animated GIF / APNG / WebP."""
    images = [face.point(lambda v, k=k: v * (10 - k) // 10) for k in range(frames)]
    extra = {"WEBP": {"lossless": True}}.get(fmt, {})
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=120, loop=0, **extra)


@pytest.mark.parametrize("fmt, name", [("GIF", "GIF"), ("PNG", "APNG"), ("WEBP", "WebP")])
def test_animated_image_is_refused_with_the_reason(url, face, fmt, name):
    """An animation is not answered with its first frame alone: 415 naming what it is, on both routes."""
    data = animation(face, fmt)
    assert decode(data).n_frames == 3
    for path in ("/protect", "/analyze"):
        r = post(url, data, path=path, name="clip.gif")
        assert r.status_code == 415 and r.headers["content-type"] == "application/json", r.text
        body = r.json()
        assert body["status"] == 415 and body["error"].startswith(f"animated {name} (3 frames): ")
        assert "still" in body["error"]
    still = encode(face, "GIF")  # a one-frame GIF is a still photo: protected, answered as PNG
    r = post(url, still)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert faces_header(r)["status"] == "protected"

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny compressed body: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def bad_inputs(face: Image.Image) -> dict[str, tuple[bytes, int]]:
    jpeg = encode(face, "JPEG")
    return {
        "not an image": (b"this is not an image, whatever its name says", 422),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], 422),
        "corrupt header": (jpeg[:20] + bytes(2000), 422),
        "empty": (b"", 422),
        "too many bytes": (os.urandom(MAX_UPLOAD + 10_000), 413),
        "too many pixels": (encode(Image.new("RGB", (2000, 2000)), "PNG"), 413),
        "decompression bomb": (png_header_only(100_000, 100_000), 413),
    }


@pytest.mark.parametrize("case", ["not an image", "truncated jpeg", "corrupt header", "empty",
                                  "too many bytes", "too many pixels", "decompression bomb"])
def test_bad_input_is_a_json_error(url, face, case):
    data, status = bad_inputs(face)[case]
    for path in ("/protect", "/analyze"):
        r = post(url, data, path=path)
        assert r.status_code == status, (case, r.text)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["status"] == status and len(r.json()["error"]) > 10


def test_missing_file_field_and_unknown_route(url):
    r = requests.post(url + "/protect", files={"photo": ("a.jpg", b"x")}, timeout=30)
    assert r.status_code == 422 and "file" in r.json()["error"]
    r = requests.get(url + "/nowhere", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    assert requests.get(url + "/healthz", timeout=30).status_code == 200  # still serving


# ------------------------------------------------------------------------------- batching, load

def test_concurrent_requests_share_a_batch(url, face):
    data = encode(face, "JPEG")
    before = requests.get(url + "/healthz", timeout=30).json()["batch_sizes"]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: post(url, data), range(2)))
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.headers["X-Batch-Size"] for r in responses] == ["2", "2"]
    after = requests.get(url + "/healthz", timeout=30).json()["batch_sizes"]
    assert after.get("2", 0) == before.get("2", 0) + 1


def test_overload_answers_503_quickly(url, face):
    """2 ongoing + 4 queued at the model: of 10 simultaneous requests some are refused at once, and
    none of them is retried (overload is not a dead replica)."""
    data = encode(face, "JPEG")

    def timed(_):
        t0 = time.perf_counter()
        r = post(url, data)
        return r, time.perf_counter() - t0

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(timed, range(10)))
    refused = [(r, s) for r, s in results if r.status_code == 503]
    assert refused and all(r.json()["error"].startswith("the service is at capacity") for r, _ in refused)
    assert all(r.headers.get("Retry-After") == "1" for r, _ in refused)
    assert min(s for _, s in refused) < 2.0
    assert all(r.status_code in (200, 503) for r, _ in results)
    assert all(r.headers["X-Retried"] == "0" for r, _ in results if r.status_code == 200)
    health = requests.get(url + "/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["ingress"]["retried"] == 0


def test_killed_replica_loses_no_request_in_flight(url, face):
    """SIGKILL of the model replica's worker process while 4 clients wait (2 protected in a batch
    on the replica, 2 queued at the ingress's handle): the calls on the dead replica are sent once
    more, to the replica Serve starts in its place; every request gets its protected photo."""
    grid = Image.new("RGB", (face.width * 2, face.height * 2))  # 4 faces: a batch of 2 takes seconds
    for i in range(4):
        grid.paste(face, ((i % 2) * face.width, (i // 2) * face.height))
    data = encode(grid, "JPEG")
    t0 = time.perf_counter()
    assert post(url, data).status_code == 200
    single = time.perf_counter() - t0
    before = requests.get(url + "/healthz", timeout=30).json()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, url, data) for _ in range(4)]
        time.sleep(0.5 + 0.5 * single)  # the first batch (2 photos, about 2 x single) is running
        assert not all(f.done() for f in futures)
        os.kill(before["pid"], signal.SIGKILL)
        responses = [f.result() for f in futures]

    assert [r.status_code for r in responses] == [200] * 4, [r.text[:300] for r in responses]
    assert all(faces_header(r)["status"] == "protected" for r in responses)
    assert sum(r.headers["X-Retried"] == "1" for r in responses) >= 1
    after = requests.get(url + "/healthz", timeout=30).json()
    assert after["pid"] != before["pid"]  # Serve's replacement replica
    retried = after["ingress"]["retried"] - before["ingress"]["retried"]
    assert retried >= 1 and after["ingress"]["retried_ok"] - before["ingress"]["retried_ok"] == retried
    assert after["ingress"]["last_cause"] in ("ActorDiedError", "ActorUnavailableError", "RayActorError")


# ------------------------------------------------------------------------------- config, registry

def test_config_file_is_a_valid_serve_config():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serving.app import CONFIG_PATH, Settings, from_config

    ServeDeploySchema.model_validate(yaml.safe_load(CONFIG_PATH.read_text()))
    _, entry = from_config()
    assert set(entry["args"]) == set(Settings.__dataclass_fields__)


def test_model_resolves_from_the_mlflow_registry(tiny_protector, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from serving.replica import resolve_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serve-test", artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        for suffix in (".json", ".safetensors"):
            mlflow.log_artifact(str(Path(tiny_protector).with_suffix(suffix)), "protector")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("invisible-face")
    version = client.create_model_version("invisible-face", f"{run.info.artifact_uri}/protector", run.info.run_id)
    client.set_registered_model_alias("invisible-face", "champion", version.version)
    stem = resolve_model("models:/invisible-face@champion", uri)
    assert stem.with_suffix(".json").read_text() == Path(tiny_protector).with_suffix(".json").read_text()
    assert resolve_model("models:/invisible-face/1", uri).with_suffix(".safetensors").exists()


# ------------------------------------------------------------------------------- browser

def test_browser_upload_shows_protected_photo_and_predictions(url, photos, tmp_path):
    """Real headless Chromium: upload a one-face photo through the page, wait for the result, screenshot
    (into docs/serving-page.png when UPDATE_SCREENSHOTS=1)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1100,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(photos / "portrait.jpg"))
        WebDriverWait(driver, 150).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        status = driver.find_element(By.ID, "status").text
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
        assert status.startswith("Protected 1 face")
        rows = driver.find_elements(By.CSS_SELECTOR, "#predictions tr")
        assert len(rows) == 1 + 3  # header + gender, age_bin, race
        width = Image.open(photos / "portrait.jpg").width
        assert driver.find_element(By.ID, "protected").get_attribute("width") == str(width)
        assert driver.find_element(By.ID, "download").get_attribute("href").startswith("data:image/jpeg;base64,")
        text = driver.find_element(By.ID, "predictions").text
        assert "target_tiny before" in text and "never attacked" in text
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        folder = PROJECT_ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
        target = folder / "serving-page.png"
        target.parent.mkdir(exist_ok=True)
        shot.quantize(128).save(target, optimize=True)
    finally:
        driver.quit()
