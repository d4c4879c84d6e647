"""Device selection: ``auto`` picks CUDA, then MPS, then CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dclip_cli.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """Return the ``torch.device`` for ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Under torchrun (:mod:`dclip_cli.distributed`) the answer is the rank's own device, and a value naming another
    device is refused.

    Raises:
        DeviceError: the device was asked for explicitly but is not available.
    """
    import torch

    from dclip_cli.distributed import current

    if current().active:
        return current().resolve_device(spec)

    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = spec.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"Unknown device {spec!r}.", hint="Use --device auto, cpu, cuda, cuda:N or mps.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "--device cuda was requested but PyTorch sees no CUDA GPU.",
            hint="Use --device cpu (or auto), or install a CUDA build of PyTorch.",
        )
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(
                "--device mps was requested but MPS is not available.", hint="Use --device cpu (or auto)."
            )
    return torch.device(spec)
