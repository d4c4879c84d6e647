"""HTTP details of downloads: what a failed request means in words, ``Content-Range``, and Google Drive's
confirmation pages. Used by :mod:`dclip_cli.checkpoints.download`.
"""

from __future__ import annotations

import contextlib
import errno
import html.parser
import re
import socket
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, getattr(errno, "ENETDOWN", errno.ENETUNREACH)}


def host_of(url: str) -> str:
    """The host name of ``url`` (``openaipublic.azureedge.net``), or the URL itself when it has none."""
    return urlsplit(url).hostname or url


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from (``__cause__``, ``__context__``, urllib3's ``reason``, args)."""
    todo, seen = [exc], set[int]()
    while todo and len(seen) < 32:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def describe_request_error(
    exc: BaseException, url: str, *, connect_timeout: float, read_timeout: float
) -> str:
    """What a failed request means, in words a user can act on (never urllib3's own text).

    >>> describe_request_error(ConnectionRefusedError(), "http://127.0.0.1:9/x", connect_timeout=10, read_timeout=60)
    '127.0.0.1 refused the connection'
    """
    host = host_of(url)
    chain = list(_causes(exc))
    names = {type(e).__name__ for e in chain}
    if isinstance(exc, requests.exceptions.SSLError) or names & {"SSLError", "SSLCertVerificationError"}:
        return f"the secure (TLS) connection to {host} failed: a certificate or proxy problem"
    if isinstance(exc, requests.exceptions.ProxyError) or "ProxyError" in names:
        return f"the proxy did not let the connection to {host} through"
    if "NameResolutionError" in names or any(isinstance(e, socket.gaierror) for e in chain):
        return f"the host name {host} could not be resolved (no network connection, or DNS is blocked)"
    if isinstance(exc, requests.exceptions.ConnectTimeout) or "ConnectTimeoutError" in names:
        return f"connecting to {host} timed out after {connect_timeout:g} s"
    if isinstance(exc, requests.exceptions.ReadTimeout) or "ReadTimeoutError" in names:
        return f"{host} sent nothing for {read_timeout:g} s"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"{host} refused the connection"
    if any(isinstance(e, OSError) and e.errno in _UNREACHABLE for e in chain):
        return f"{host} cannot be reached (network unreachable)"
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return f"{host} reset the connection"
    if names & {"ProtocolError", "IncompleteRead", "ChunkedEncodingError", "RemoteDisconnected"}:
        return f"{host} closed the connection early"
    return f"the connection to {host} failed"


def content_range(value: str) -> tuple[int, int | None]:
    """Parse ``bytes START-END/TOTAL`` into ``(START, TOTAL or None)``; ``(-1, None)`` when unreadable."""
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value)
    if not m:
        return -1, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)


def unsatisfiable_size(resp: requests.Response) -> int | None:
    """The file size a ``416 Range Not Satisfiable`` answer gives (``Content-Range: bytes */SIZE``), if any."""
    m = re.match(r"\s*bytes\s+\*/(\d+)", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def full_size(resp: requests.Response) -> int | None:
    """The size of the whole file according to a 200 or 206 response (``None`` when it does not say)."""
    if resp.status_code == 206:
        return content_range(resp.headers.get("Content-Range", ""))[1]
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def validator(resp: requests.Response) -> str | None:
    """What identifies this version of the file for ``If-Range``: a strong ``ETag``, else ``Last-Modified``."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified") or None


def is_html(resp: requests.Response) -> bool:
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/html"


class _FormParser(html.parser.HTMLParser):
    """Collects the first download form (action + hidden inputs) and any ``confirm=`` link of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}
        self.confirm_href: str | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("name"):
            self.inputs[a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", "") and self.confirm_href is None:
            self.confirm_href = a["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def confirmation_url(resp: requests.Response) -> str | None:
    """The URL behind a large-file confirmation page (Google Drive's "can't scan for viruses"), if any.

    Handles the three shapes Drive has used: a ``download_warning`` cookie whose value is the ``confirm`` token,
    a page with a ``confirm=`` link, and a form (``drive.usercontent.google.com/download``) with hidden inputs.
    """
    base = resp.url
    for name, value in resp.cookies.items():
        if name.startswith("download_warning") and value:
            return with_query(base, {"confirm": value})
    body = b""
    for chunk in resp.iter_content(chunk_size=65536):
        body += chunk
        if len(body) > 2_000_000:
            break
    parser = _FormParser()
    with contextlib.suppress(Exception):
        parser.feed(body.decode("utf-8", errors="replace"))
    if parser.action is not None and ("confirm" in parser.inputs or "id" in parser.inputs):
        action = urljoin(base, parser.action or base)
        return with_query(action, parser.inputs)
    if parser.confirm_href:
        return urljoin(base, parser.confirm_href)
    m = re.search(rb"confirm=([0-9A-Za-z_\-]+)", body)
    if m:
        return with_query(base, {"confirm": m.group(1).decode()})
    return None


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))
