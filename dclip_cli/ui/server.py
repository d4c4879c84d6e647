"""Serve the page: options of ``dclip ui``, authentication, loopback checks and the Gradio launch.

Gradio is imported only by :func:`serve`, never at module level, so ``dclip --help`` stays light and a missing
``ui`` extra is reported by :func:`gradio_missing` before anything else happens.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dclip_cli.errors import ConfigError, DclipError

INSTALL_HINT = (
    "Install it with: pipx install 'dclip[ui]' (or pip install 'dclip[ui]' in dclip's environment)."
)
AUTH_ENV = "DCLIP_UI_AUTH"
#: Gradio settings that would make the page reach out to the internet; forced off for the ``dclip ui`` process
QUIET_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SHARE": "False",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
}


@dataclass(frozen=True)
class ServeOptions:
    """The options of ``dclip ui``.

    Args:
        host: address to bind (loopback by default).
        port: TCP port.
        outputs: folder for results.
        auth: ``(user, password)`` required by the page, or ``None``.
        open_browser: open the page in the default browser once it is up.
        domain: preselected domain.
        device, precision, compile, clip_model, metrics, batch_size: job settings, as for ``dclip edit``.
        max_upload_mb, max_image_side, max_images: upload bounds.
    """

    outputs: Path
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    open_browser: bool = True
    domain: str | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    clip_model: str = "ViT-B/16"
    metrics: tuple[str, ...] | None = None
    batch_size: int = 4
    max_upload_mb: int = 20
    max_image_side: int = 4096
    max_images: int = 16


def gradio_missing() -> bool:
    """Whether the ``ui`` extra (Gradio) is missing."""
    try:
        return importlib.util.find_spec("gradio") is None
    except (ImportError, ValueError):
        return True


def require_gradio() -> None:
    """Raise a :class:`DclipError` naming the install command when Gradio is not installed."""
    if gradio_missing():
        raise DclipError(
            "'dclip ui' needs the optional 'ui' extra (Gradio), which is not installed.", hint=INSTALL_HINT
        )


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` -> ``(user, password)``; ``None`` or empty -> ``None``.

    Raises:
        ConfigError: no ``:``, or an empty user or password.
    """
    if value is None or value == "":
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError(
            "--auth must be USER:PASSWORD with a non-empty user and password.",
            hint=f"For example --auth alice:s3cret, or set {AUTH_ENV}=alice:s3cret.",
        )
    return user, password


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name (only this machine can reach it)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Raise :class:`ConfigError` when ``port`` cannot be bound on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(
                f"Cannot serve on {host}:{port}: {exc.strerror or exc}.",
                hint="Choose another --port (another program, or another 'dclip ui', is using it).",
            ) from None


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _wait_for_stop() -> None:
    """Block until Ctrl+C or SIGTERM (both end the server normally, so the temporary folder is removed)."""
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def serve(options: ServeOptions, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Build the page and serve it until interrupted (Ctrl+C).

    ``on_ready(url)`` is called once the server accepts connections. Ctrl+C or SIGTERM stop it. Uploads live in
    a temporary folder removed on exit; results stay in ``options.outputs``.
    """
    require_gradio()
    check_port(options.host, options.port)
    for key, value in QUIET_ENV.items():
        os.environ[key] = value
    scratch = Path(tempfile.mkdtemp(prefix="dclip-ui-"))
    gradio_dir = scratch / "gradio"
    gradio_dir.mkdir()
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_dir)
    try:
        import gradio as gr

        from dclip_cli.ui import app, backend

        outputs = options.outputs.expanduser().resolve()
        outputs.mkdir(parents=True, exist_ok=True)
        settings = backend.Settings(
            outputs=outputs,
            uploads=scratch / "sessions",
            device=options.device,
            precision=options.precision,
            compile=options.compile,
            clip_model=options.clip_model,
            metrics=options.metrics,
            batch_size=options.batch_size,
            max_upload_mb=options.max_upload_mb,
            max_image_side=options.max_image_side,
            max_images=options.max_images,
        )
        demo = app.build(settings, domain=options.domain, upload_root=gradio_dir)
        demo.queue(default_concurrency_limit=4, max_size=64)
        theme = gr.themes.Default(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        )  # system fonts: the page loads nothing from outside this machine
        _, local_url, _ = demo.launch(
            server_name=options.host,
            server_port=options.port,
            auth=options.auth,
            auth_message="dclip: sign in with the user and password given to 'dclip ui --auth'.",
            share=False,
            inbrowser=options.open_browser,
            prevent_thread_lock=True,
            quiet=True,
            show_error=True,
            allowed_paths=[str(outputs), str(backend.sample_image())],
            max_file_size=max(options.max_upload_mb, backend.MAX_CHECKPOINT_MB) * 1_000_000,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            footer_links=["api", "settings"],
            theme=theme,
            css=app.CSS,
        )
        if on_ready is not None:
            on_ready(url_of(options.host, options.port) if local_url is None else str(local_url))
        try:
            _wait_for_stop()
        finally:
            demo.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
