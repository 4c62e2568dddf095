"""Device names from the user (``--device``, ``train.device``) checked up front, with one-line errors."""

from __future__ import annotations

import torch

from biglm.errors import BiglmError


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def resolve_device(spec: str | torch.device | None, where: str = "--device") -> torch.device:
    """``spec`` as a ``torch.device`` that exists here (None, "" and "auto": CUDA if available, else CPU).

    Raises ``BiglmError`` naming ``where`` for a malformed name, CUDA on a CPU-only build or a machine
    without a visible GPU, a CUDA index beyond the visible devices, or MPS where it is unavailable.
    """
    if spec is None or str(spec) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise BiglmError(f"{where} {spec!r}: not a device name (expected cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise BiglmError(f"{where} {spec}: this PyTorch ({torch.__version__}) is a CPU-only build; "
                             "use --device cpu or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise BiglmError(f"{where} {spec}: no CUDA GPU is visible on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BiglmError(f"{where} {spec}: only {torch.cuda.device_count()} CUDA device(s) visible "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise BiglmError(f"{where} {spec}: MPS is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps", "meta") and not hasattr(torch, device.type):
        raise BiglmError(f"{where} {spec}: unsupported device type (expected cpu, cuda, cuda:N or mps)")
    return device
