"""Atomic file writes and the cache folder. Every file the tool writes goes through here."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from autocompress.errors import UserError

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save", "cache_dir", "load_cached_state_dict",
    "make_folder", "read_json", "weights_digest",
]


def cache_dir() -> Path:
    """Where teachers and shared latency tables live (``$AUTOCOMPRESS_CACHE`` overrides)."""
    root = os.environ.get("AUTOCOMPRESS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "autocompress"


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path`` (and
    fsync the folder, so the rename survives a power cut). A reader sees the old file or
    the new one, never a part; a writer killed before the rename leaves only its
    ``.NAME.*.tmp``, which nothing reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0600 would hide shared tables and engines
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename itself is done
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_cached_state_dict(path: Path | str) -> dict | None:
    """A state dict saved with :func:`atomic_torch_save`, or ``None`` when the file is missing
    or unreadable (truncated or half-written by an older process): a cache entry that does not
    load whole is never trusted, only rebuilt. Loads tensors only (``weights_only=True``)."""
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # torch raises several types for a damaged archive; all mean "rebuild it"
        return None
    return state if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()) else None


def read_json(path: Path | str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def weights_digest(model: torch.nn.Module) -> "hashlib._Hash":
    """A SHA-256 of every tensor of ``model``'s state dict, to extend and hex-digest."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest


def make_folder(folder: Path, create: bool = True, option: str = "--run-dir") -> None:
    """Create ``folder``, which ``option`` names (or with ``create=False`` only
    check that it could be), with a one-line error when it cannot be."""
    problem = None
    if folder.exists() and not folder.is_dir():
        problem = "a file is there"
    else:
        ancestor = folder
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            problem = f"{str(ancestor)!r} is a file"
        elif not os.access(ancestor, os.W_OK | os.X_OK):
            problem = f"{str(ancestor)!r} is not writable"
            if ancestor == folder:
                raise UserError(f"The folder {str(folder)!r} is not writable; give {option} a writable folder.")
        elif create:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                problem = exc.strerror or type(exc).__name__
    if problem:
        raise UserError(f"Cannot create the folder {str(folder)!r} ({problem}); give {option} a writable folder.")
