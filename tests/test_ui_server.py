"""``dclip ui`` end to end (issue #15): a real ``dclip ui`` subprocess on a free loopback port with the tiny world
(a preset plugin installed as a throw-away distribution, checkpoints from a local HTTP server, a tiny CLIP),
driven through its API with ``gradio_client`` and through the page in headless Chromium with Playwright."""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.http_server import FileServer
from tests.support.ui import (
    CHROMIUM_ARGS,
    IMAGE_SIZE,
    PRESET,
    UiProcess,
    UiWorld,
    chromium_path,
    require,
    start_ui,
    write_ui_world,
)

METRIC_KEYS = {"clip_directional", "clip_target", "reconstruction_psnr"}  # --metrics clip,psnr


#: the page is served with a password (from DCLIP_UI_AUTH), so every test also goes through the sign-in
AUTH = ("tester", "not-a-secret")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UiWorld, UiProcess]]:
    require("gradio")
    require("gradio_client")
    root = tmp_path_factory.mktemp("ui-world")
    with FileServer() as http:
        world = write_ui_world(root, http)
        world.env["DCLIP_UI_AUTH"] = ":".join(AUTH)
        with start_ui(world) as proc:
            yield world, proc


@pytest.fixture
def client(ui: tuple[UiWorld, UiProcess], tmp_path: Path) -> Any:
    from gradio_client import Client

    _, proc = ui
    return Client(proc.url, auth=AUTH, verbose=False, download_files=str(tmp_path / "downloads"))


def signed_in(url: str) -> urllib.request.OpenerDirector:
    """A urllib opener holding the page's session cookie."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"username": AUTH[0], "password": AUTH[1]}).encode()
    opener.open(f"{url}login", data=form, timeout=10)
    return opener


def test_serves_on_loopback_behind_the_password(ui: tuple[UiWorld, UiProcess]) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    _, proc = ui
    assert proc.url.startswith("http://127.0.0.1:")
    assert "press Ctrl+C to stop" in proc.output()
    assert "Warning" not in proc.output()  # loopback: no exposure warning
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{proc.url}config", timeout=10)
    assert err.value.code == 401
    with pytest.raises(AuthenticationError):
        Client(proc.url, verbose=False)
    assert json.load(signed_in(proc.url).open(f"{proc.url}config", timeout=10))["title"] == "dclip"


def test_edit_returns_an_image_of_the_preset_size_and_the_sidecar_metrics(
    ui: tuple[UiWorld, UiProcess], client: Any
) -> None:
    from gradio_client import handle_file

    world, _ = ui
    image, compare, gallery, metrics, files, status = client.predict(
        [handle_file(str(world.image))],
        "auto",
        "pixar",
        1.0,
        0,
        True,
        False,
        "0,1",
        None,
        None,
        api_name="/edit",
    )
    with Image.open(image) as im:
        assert im.size == (IMAGE_SIZE, IMAGE_SIZE)
    with Image.open(compare) as im:
        assert im.width > 3 * IMAGE_SIZE  # input | reconstruction | edit
    assert [g["caption"] for g in gallery] == ["photo: pixar"]
    assert set(metrics["photo: pixar"]) == METRIC_KEYS
    sidecar = next(Path(f) for f in files if f.endswith(".json"))
    doc = json.loads(sidecar.read_text())
    assert {k: round(v, 4) for k, v in doc["metrics"].items()} == metrics["photo: pixar"]
    assert doc["settings"]["edit"] == "pixar" and doc["settings"]["domain"] == PRESET
    assert f"**Domain:** {PRESET}" in status and "official DiffusionCLIP checkpoint" in status
    written = sorted(p.name for p in world.outputs.glob("*-edit-pixar/*"))
    assert written == ["photo.pixar.compare.png", "photo.pixar.json", "photo.pixar.png"]


def test_a_bad_schedule_returns_the_parser_message(client: Any) -> None:
    from dclip_cli.apps.schedule import parse_mix_schedule
    from dclip_cli.errors import InvalidScheduleError

    with pytest.raises(InvalidScheduleError) as expected:
        parse_mix_schedule("300:0.5,0.5;100:1,0", 2, member_names=["smiling", "angry"])
    text = client.predict("300:0.5,0.5;100:1,0", ["smiling", "angry"], False, api_name="/validate_schedule")
    assert text.startswith("**Invalid:** " + expected.value.message)
    assert f"Hint: {expected.value.hint}" in text
    ok = client.predict("300:1,3;0:1,1", ["smiling", "angry"], False, api_name="/validate_schedule")
    assert ok.startswith("**Valid:** 300:1,3;0:1,1") and "smiling 0.25, angry 0.75" in ok


def test_errors_are_one_line_messages_with_hints(ui: tuple[UiWorld, UiProcess], client: Any) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    world, proc = ui
    with pytest.raises(AppError) as err:
        client.predict(
            [handle_file(str(world.image))],
            PRESET,
            "smilng",
            1.0,
            0,
            True,
            False,
            "",
            None,
            None,
            api_name="/edit",
        )
    message = str(err.value)
    assert f"Preset '{PRESET}' has no edit named 'smilng'. Did you mean 'smiling'?" in message
    assert "Hint: Run 'dclip presets show tinyface'" in message
    assert "Traceback" not in message and "Traceback" not in proc.output()


def test_finetune_job_reports_progress_and_adds_a_library_entry(
    ui: tuple[UiWorld, UiProcess], client: Any
) -> None:
    world, _ = ui
    job = client.submit(
        PRESET, "smiling", "", "", "preset default", 1, None, 1, 0, 0, False, api_name="/finetune"
    )
    status, log, _preview, result = job.result(timeout=120)
    assert result["names"] == [f"{PRESET}/smiling"]
    assert status.startswith(f"**Done:** added {PRESET}/smiling to the library")
    # the same events as the CLI: status lines, per-epoch losses
    assert "Drawing 1 sample(s) from the base model" in log
    assert "Edit 1/1 smiling: 'face' -> 'smiling face'" in log and "epoch 1/1: clip" in log
    assert (world.library() / PRESET / "smiling.safetensors").is_file()
    table, _names = client.predict(api_name="/library")
    rows = {row[0]: row for row in table["data"]}
    row = rows[f"{PRESET}/smiling"]
    assert row[1:2] == ["edit"] and row[3:6] == ["face", "smiling face", 200] and row[6] == "tiny_base"
    assert rows["tiny_base"][1] == "checkpoint"  # the cached base model is listed too


def test_library_import_and_delete_through_the_page(ui: tuple[UiWorld, UiProcess], client: Any) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from tests.support.editing import checkpoint_bytes

    world, _ = ui
    upload = world.root / "downloaded_edit.pth"
    upload.write_bytes(checkpoint_bytes(5))
    status, table, _ = client.predict(
        handle_file(str(upload)), f"{PRESET}/imported", False, api_name="/import"
    )
    assert status == f"Imported as {PRESET}/imported (imported.pth)."
    assert f"{PRESET}/imported" in {row[0] for row in table["data"]}
    assert (world.library() / PRESET / "imported.pth").read_bytes() == upload.read_bytes()
    with pytest.raises(AppError, match="is not a valid checkpoint name"):
        client.predict(handle_file(str(upload)), "../../outside", False, api_name="/import")
    with pytest.raises(AppError, match="face/other is not in the list of choices"):  # only listed entries
        client.predict("face/other", api_name="/delete")
    status, table, _ = client.predict(f"{PRESET}/imported", api_name="/delete")
    assert status.startswith(f"Deleted {PRESET}/imported (imported.pth")
    assert f"{PRESET}/imported" not in {row[0] for row in table["data"]}
    assert not (world.library() / PRESET / "imported.pth").exists()


def test_cancel_stops_a_running_finetune_job_and_saves_nothing(
    ui: tuple[UiWorld, UiProcess], client: Any
) -> None:
    world, _ = ui
    job = client.submit(
        PRESET, "angry", "", "", "preset default", 500, None, 1, 0, 0, False, api_name="/finetune"
    )
    deadline = time.monotonic() + 60
    while not any("Fine-tuning" in str(out[0]) for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), job.outputs()
        time.sleep(0.1)
    assert client.predict(api_name="/cancel").startswith("Cancelling")
    deadline = time.monotonic() + 30
    while not job.done():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not (world.library() / PRESET / "angry.safetensors").exists()
    table, _ = client.predict(api_name="/library")
    assert f"{PRESET}/angry" not in {row[0] for row in table["data"]}
    # the device is free again: the next job runs
    assert client.predict("", ["smiling", "angry"], False, api_name="/validate_schedule").startswith(
        "**Valid:**"
    )


def test_only_the_outputs_folder_is_served(ui: tuple[UiWorld, UiProcess]) -> None:
    world, proc = ui
    opener = signed_in(proc.url)
    probe = world.outputs / "probe.txt"
    probe.write_text("result")
    assert opener.open(f"{proc.url}gradio_api/file={probe}", timeout=10).read() == b"result"
    library_file = world.library() / "secret.txt"
    library_file.parent.mkdir(parents=True, exist_ok=True)
    library_file.write_text("library")
    for path in ("/etc/passwd", str(world.clip), str(library_file), f"{world.outputs}/../tiny_clip.pt"):
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(f"{proc.url}gradio_api/file={path}", timeout=10)
        assert err.value.code in (403, 404), path


def test_browser_upload_edit_and_screenshot(ui: tuple[UiWorld, UiProcess], tmp_path: Path) -> None:
    """Headless Chromium: upload an image, choose an edit, press Edit, wait for the output image, screenshot."""
    require("playwright")
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    from dclip_cli.images import sample_image_path

    world, proc = ui
    face = shutil.copyfile(sample_image_path(), tmp_path / "face.png")  # the bundled public-domain portrait
    requests: list[str] = []
    shot = tmp_path / "dclip-ui-edit.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 960},
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(proc.url, wait_until="domcontentloaded")
            page.locator("input[data-testid=textbox]").fill(AUTH[0])  # Gradio's sign-in form
            page.locator("input[data-testid=password]").fill(AUTH[1])
            page.get_by_role("button", name="Login").click()
            page.locator("#edit-images input[type=file]").set_input_files(str(face))
            page.wait_for_function(
                "document.querySelector('#edit-detected')?.innerText.includes('tinyface')", timeout=30_000
            )
            choice = page.locator("#edit-to input")
            choice.click()
            choice.fill("pixar")
            choice.press("Enter")
            page.click("#edit-run")
            page.wait_for_function(
                "(() => { const i = document.querySelector('#edit-output img');"
                " return i && i.complete && i.naturalWidth > 0; })()",
                timeout=60_000,
            )
            size = page.evaluate(
                "(() => { const i = document.querySelector('#edit-output img');"
                " return [i.naturalWidth, i.naturalHeight]; })()"
            )
            page.wait_for_function("document.querySelector('#edit-status')?.innerText.includes('Written to')")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert size == [IMAGE_SIZE, IMAGE_SIZE]
    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 600
    assert requests and all(r.startswith(proc.url.rstrip("/")) or r.startswith("data:") for r in requests), {
        r for r in requests if not r.startswith(proc.url.rstrip("/"))
    }
    # regenerate the screenshot of docs/ui.md: DCLIP_UI_SCREENSHOT=docs/ui-edit.png python -m pytest tests/test_ui_server.py
    target = os.environ.get("DCLIP_UI_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
