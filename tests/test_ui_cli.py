"""``dclip ui`` options (issue #15): loopback by default, a warning for other addresses, ``--auth`` or
``DCLIP_UI_AUTH``, a clear message without the ``ui`` extra, and no Gradio import for ``dclip --help``."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from dclip_cli.ui import server


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[server.ServeOptions]:
    """Replace the launch: record the options and report a URL, as the real server does once it is up."""
    calls: list[server.ServeOptions] = []

    def fake_serve(options: server.ServeOptions, *, on_ready: Any = None) -> None:
        calls.append(options)
        on_ready(server.url_of(options.host, options.port))

    monkeypatch.setattr(server, "gradio_missing", lambda: False)
    monkeypatch.setattr(server, "serve", fake_serve)
    return calls


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def test_defaults_serve_on_loopback_without_a_warning(
    served: list[server.ServeOptions], tmp_path: Path
) -> None:
    result = invoke("--device", "cpu", "ui", "--no-browser")
    assert result.exit_code == 0, result.output
    (options,) = served
    assert (options.host, options.port, options.auth, options.open_browser) == (
        "127.0.0.1",
        7860,
        None,
        False,
    )
    assert options.device == "cpu" and options.precision == "fp32"  # DCLIP_PRECISION from the test isolation
    assert options.metrics is None and options.clip_model == "ViT-B/16"  # --metrics auto, the CLI's default
    assert options.outputs.name == "outputs" and options.outputs.parent.name == "data"  # $DCLIP_DATA/outputs
    assert result.stdout.strip() == "http://127.0.0.1:7860/"
    assert "Warning" not in result.output


def test_another_address_needs_host_and_warns(served: list[server.ServeOptions]) -> None:
    result = invoke("ui", "--host", "0.0.0.0", "--port", "8123", "--no-browser", "--domain", "face")
    assert result.exit_code == 0, result.output
    assert served[0].host == "0.0.0.0" and served[0].domain == "face"
    text = " ".join(result.stderr.split())
    assert "Serving on 0.0.0.0: anyone who can reach this machine on port 8123 can use the page" in text
    assert "protect it with --auth USER:PASSWORD." in text


def test_auth_from_the_flag_or_the_environment(served: list[server.ServeOptions]) -> None:
    assert invoke("ui", "--auth", "alice:s3:cret", "--no-browser").exit_code == 0
    result = invoke("ui", "--host", "0.0.0.0", "--no-browser", env={"DCLIP_UI_AUTH": "bob:pw"})
    assert result.exit_code == 0, result.output
    assert [o.auth for o in served] == [("alice", "s3:cret"), ("bob", "pw")]
    assert "--auth USER" not in result.stderr and "anyone who can reach" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth", "alice"], "--auth must be USER:PASSWORD with a non-empty user and password."),
        (["--domain", "nope"], "No preset named 'nope'."),
        (["--metrics", "clip,fid"], '--metrics item 2 "fid" is not a metric.'),
        (["--device", "tpu"], "'tpu' is not a device"),
    ],
)
def test_bad_options_are_reported_before_serving(
    served: list[server.ServeOptions], args: list[str], message: str
) -> None:
    result = invoke("ui", "--no-browser", *args)
    assert result.exit_code in (1, 2)
    assert message in " ".join(result.output.replace("│", " ").split())
    assert served == []


def test_a_busy_port_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "gradio_missing", lambda: False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = invoke("ui", "--port", str(port), "--no-browser")
    assert result.exit_code == 1
    assert f"Error: Cannot serve on 127.0.0.1:{port}:" in result.stderr
    assert "Hint: Choose another --port" in result.stderr


def test_without_the_extra_the_message_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError, as when not installed
    result = invoke("ui", "--no-browser")
    assert result.exit_code == 1
    assert (
        "Error: 'dclip ui' needs the optional 'ui' extra (Gradio), which is not installed." in result.stderr
    )
    assert "pipx install 'dclip[ui]'" in result.stderr
    assert "Traceback" not in result.output


def test_help_imports_neither_gradio_nor_torch() -> None:
    code = (
        "import sys\n"
        "from dclip_cli.cli.app import app\n"
        "for args in (['--help'], ['ui', '--help']):\n"
        "    try:\n"
        "        app(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('LOADED', ' '.join(m for m in ('gradio', 'torch', 'gradio_client') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "LOADED"
    assert " ui " in out and "--auth" in out and "--no-browser" in out


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.org", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert server.is_loopback(host) is loopback
