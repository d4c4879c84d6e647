"""Checkpoint specs: what a file is called, where to get it, and how to prove it is the right one.

Specs are contributed by the core (CLIP, identity weights) and by preset plugins through the
``register_checkpoints`` hook. Command code fetches by ``name``, never by URL.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from dclip_cli.errors import CheckpointError

#: The on-disk formats dclip can load.
CheckpointFormat = Literal[
    "ddpm",  # ermongroup/SDEdit DDPM state dict (.ckpt), pickled OrderedDict of tensors
    "adm",  # guided-diffusion state dict (.pt)
    "diffusers-ddpm",  # diffusers UNet2DModel folder/file (diffusion_pytorch_model.safetensors / .bin)
    "openai-clip",  # OpenAI CLIP TorchScript archive (.pt) or plain state dict
    "facenet",  # facenet-pytorch InceptionResnetV1 state dict
    "torchvision",  # torchvision ImageNet classifier weights (the LPIPS trunks)
    "finetuned",  # official DiffusionCLIP fine-tuned .pth (base architecture state dict)
    "dclip",  # dclip fine-tuned .safetensors with metadata
]

FORMATS: tuple[str, ...] = (
    "ddpm", "adm", "diffusers-ddpm", "openai-clip", "facenet", "torchvision", "finetuned", "dclip",
)  # fmt: skip

# Whole names only (``fullmatch``): with ``match`` and ``$``, "face/x\n" passed and became a file name ending in a
# newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_HEX_RE = re.compile(r"[0-9a-f]+")


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is a whole registry name: letters, digits, ``._-``, at most one ``/``, no ``..``."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and ".." not in name


def is_valid_filename(filename: object) -> bool:
    """Whether ``filename`` is a plain file name (no folder, no ``..``, nothing after a newline)."""
    return isinstance(filename, str) and FILE_RE.fullmatch(filename) is not None and ".." not in filename


def _hash_problems(sha256: str | None, md5: str | None) -> list[str]:
    problems = []
    if sha256 is not None and (len(sha256) != 64 or not _HEX_RE.fullmatch(sha256)):
        problems.append("sha256 must be 64 lower-case hex digits")
    if md5 is not None and (len(md5) != 32 or not _HEX_RE.fullmatch(md5)):
        problems.append("md5 must be 32 lower-case hex digits")
    return problems


@dataclass(frozen=True)
class Mirror:
    """A download URL that serves *different bytes* from the spec's own (another format or conversion).

    A plain string in :attr:`CheckpointSpec.urls` serves the spec's file: the spec's ``sha256``, ``md5``, ``size``
    and ``format`` apply to it. A :class:`Mirror` describes its own bytes instead: only its own hashes and size
    are checked, and ``format`` (default: the spec's) is recorded beside the cached file so loaders know what
    arrived, for example the diffusers copy of a DDPM checkpoint.

    Args:
        url: the URL (http or https).
        format: the format this mirror serves, when it differs from the spec's.
        sha256: pinned SHA-256 of this mirror's file.
        md5: MD5 of this mirror's file, when that is all that is published.
        size: expected size in bytes of this mirror's file.
        note: one line about the mirror (shown in download errors).
    """

    url: str
    format: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        problems = _hash_problems(self.sha256, self.md5)
        if not self.url.startswith(("http://", "https://")):
            problems.append(f"url {self.url!r} must start with http:// or https://")
        if self.format is not None and self.format not in FORMATS:
            problems.append(f"format {self.format!r} must be one of {', '.join(FORMATS)}")
        if problems:
            raise CheckpointError(f"Mirror {self.url!r} is invalid: " + "; ".join(problems) + ".")


@dataclass(frozen=True)
class CheckpointSpec:
    """One downloadable file.

    Args:
        name: registry name (``celeba_hq``, ``clip-vit-b-16``, ``face/pixar``); letters, digits, ``._-`` and at
            most one ``/``. Never a path.
        filename: the original file name, kept on disk (``celeba_hq.ckpt``).
        urls: mirrors, tried in order (``DCLIP_MIRROR`` goes first when set): plain URLs serving this spec's
            bytes, or :class:`Mirror` records for copies in another format (their own hashes apply).
        sha256: pinned SHA-256, when known.
        md5: MD5, when that is all that is published.
        size: exact size in bytes, when known (checked after every download).
        approx_size: approximate size in bytes, for display only (``dclip models list``, ``fetch --dry-run``), when
            the exact size is not published; never checked.
        format: how to load it (see :data:`FORMATS`).
        arch: architecture of a diffusion checkpoint (``ddpm`` or ``adm``), else ``None``.
        arch_config: architecture hyper-parameters for diffusion checkpoints.
        base: for fine-tuned models, the registry name of their base checkpoint.
        t0: for fine-tuned models, the return step they were trained for.
        description: one line for ``dclip models list``.
        license_note: where the file comes from and under which terms.
        manual: instructions for files without a working direct URL.
        aliases: other names :func:`dclip_cli.checkpoints.store.get_spec` accepts (``ViT-B/16``).
    """

    name: str
    filename: str
    urls: tuple[str | Mirror, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    format: str = "ddpm"
    arch: str | None = None
    arch_config: dict[str, Any] | None = None
    base: str | None = None
    t0: int | None = None
    description: str = ""
    license_note: str = ""
    manual: str | None = None
    aliases: tuple[str, ...] = ()
    approx_size: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not is_valid_name(self.name):
            problems.append(f"name {self.name!r} must be letters, digits, '._-' and at most one '/'")
        if not is_valid_filename(self.filename):
            problems.append(f"filename {self.filename!r} must be a plain file name")
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r} must be one of {', '.join(FORMATS)}")
        problems.extend(_hash_problems(self.sha256, self.md5))
        if isinstance(self.urls, (str, Mirror, list)):
            urls = (self.urls,) if isinstance(self.urls, (str, Mirror)) else tuple(self.urls)
            object.__setattr__(self, "urls", urls)
        for url in self.urls:
            if isinstance(url, str) and not url.startswith(("http://", "https://")):
                problems.append(f"url {url!r} must start with http:// or https://")
            elif not isinstance(url, (str, Mirror)):
                problems.append(f"urls must hold strings or Mirror records, not {type(url).__name__}")
        if isinstance(self.aliases, (str, list)):
            aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
            object.__setattr__(self, "aliases", aliases)
        if self.size is not None and self.size < 0:
            problems.append("size must be a number of bytes")
        if self.approx_size is not None and self.approx_size < 0:
            problems.append("approx_size must be a number of bytes")
        if problems:
            raise CheckpointError(f"Checkpoint spec {self.name!r} is invalid: " + "; ".join(problems) + ".")

    @property
    def display_size(self) -> tuple[int | None, bool]:
        """``(bytes, approximate)``: the exact size when pinned, else the approximate one, else ``(None, False)``."""
        if self.size is not None:
            return self.size, False
        if self.approx_size is not None:
            return self.approx_size, True
        return None, False

    def mirrors(self) -> list[Mirror]:
        """The download sources in order, each as a :class:`Mirror` with the hashes that apply to it."""
        out = []
        for url in self.urls:
            if isinstance(url, Mirror):
                out.append(url if url.format else Mirror(**{**asdict(url), "format": self.format}))
            else:
                out.append(Mirror(url, format=self.format, sha256=self.sha256, md5=self.md5, size=self.size))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["urls"] = list(d["urls"])  # asdict already turned Mirror records into dicts
        d["aliases"] = list(self.aliases)
        return d
