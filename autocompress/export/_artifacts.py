"""What a run keeps beside its engines: fine-tuned candidate weights and engine sidecars.

A candidate is never pickled: its ``state_dict`` is saved (``candidates/trial-NNNN.pt``)
and the module is rebuilt from the trial's policy with ``compress.apply`` before the
weights are loaded back with ``torch.load(..., weights_only=True)``. Every engine file
``X`` gets a sidecar ``X.json`` with its provenance and the checks it passed or failed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from autocompress._io import atomic_torch_save, atomic_write_json, read_json
from autocompress.compress import ActFakeQuant, calibrate
from autocompress.errors import UserError

__all__ = [
    "CANDIDATES_DIR", "CHECKPOINT_SCHEMA", "KEEP_OFF_FRONT_MAX_BYTES", "SIDECAR_SCHEMA", "candidate_path", "file_sha256",
    "load_candidate_weights", "onnx_inputs", "prune_candidates", "read_sidecar", "save_candidate", "sidecar_path",
    "transfer_weights", "write_sidecar",
]

CANDIDATES_DIR = "candidates"
CHECKPOINT_SCHEMA = 1
SIDECAR_SCHEMA = 1
# Checkpoints of trials off the front are deleted at the end of a run when larger than this.
KEEP_OFF_FRONT_MAX_BYTES = 1 << 20


def candidate_path(run_dir: Path | str, trial: int) -> Path:
    return Path(run_dir) / CANDIDATES_DIR / f"trial-{trial:04d}.pt"


def sidecar_path(engine_path: Path | str) -> Path:
    return Path(f"{engine_path}.json")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_candidate(model: nn.Module, path: Path | str, trial: int, policy: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights (and the policy that rebuilds its structure) atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"schema": CHECKPOINT_SCHEMA, "trial": trial, "policy": dict(policy), "state_dict": state}, path)
    return Path(path)


def _read_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"No fine-tuned weights at {str(path)!r} (deleted at the end of the run, or a run older than checkpoints); "
            "re-run the search or export a front member."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: pickle, zip and torch's own errors
        raise UserError(f"{str(path)!r} is unreadable as a checkpoint ({type(exc).__name__}); re-run the search to fine-tune it again.") from None
    if not isinstance(data, dict) or data.get("schema") != CHECKPOINT_SCHEMA or "state_dict" not in data:
        raise UserError(f"{str(path)!r} is not a candidate checkpoint of schema {CHECKPOINT_SCHEMA}; re-run the search.")
    return data


def load_candidate_weights(candidate: nn.Module, path: Path | str) -> nn.Module:
    """Load a checkpoint into ``candidate`` (rebuilt from the same policy): every tensor must match."""
    try:
        candidate.load_state_dict(_read_checkpoint(path)["state_dict"], strict=True)
    except RuntimeError as exc:  # missing, unexpected or reshaped tensors; torch's first line is only a header
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        what = next((line for line in lines if any(k in line for k in ("size mismatch", "Missing key", "Unexpected key"))), lines[0] if lines else "")
        raise UserError(f"{str(path)!r} does not fit the trial's policy ({what[:160]}); it belongs to another run or trial.") from None
    return candidate.eval()


def _canonical(key: str) -> str:
    # A float16 layer wraps the float one (``name.layer.weight``); both hold the same tensor.
    return key.replace(".layer.", ".")


def _is_quant_state(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return key.startswith("act_quant_") or leaf in ("weight_scale", "weight_zero_point")


def transfer_weights(path: Path | str, candidate: nn.Module, calibration_batches: list) -> nn.Module:
    """Load a checkpoint's weights into a candidate of the same pruning and ranks but other
    precisions, then re-derive the quantization state (weight scales, activation ranges on
    ``calibration_batches``) from the loaded weights."""
    source = {_canonical(k): v for k, v in _read_checkpoint(path)["state_dict"].items() if not _is_quant_state(k)}
    target = candidate.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, value in target.items():
        if _is_quant_state(key):
            continue
        canonical = _canonical(key)
        if canonical not in source or source[canonical].shape != value.shape:
            raise UserError(f"The checkpoint has no tensor {canonical!r} of shape {tuple(value.shape)}; it belongs to another policy.")
        loaded[key] = source[canonical]
    candidate.load_state_dict(loaded, strict=False)
    for q in candidate.modules():
        if isinstance(q, ActFakeQuant):
            q.min_val.fill_(float("inf"))
            q.max_val.fill_(float("-inf"))
    candidate.train(False)  # refreshes the weight scales from the loaded weights
    calibrate(candidate, calibration_batches)
    return candidate.eval()


def prune_candidates(run_dir: Path | str, keep: set[int], max_bytes: int = KEEP_OFF_FRONT_MAX_BYTES) -> list[Path]:
    """Delete checkpoints of trials not in ``keep`` that are larger than ``max_bytes``."""
    removed = []
    for path in sorted((Path(run_dir) / CANDIDATES_DIR).glob("trial-*.pt")):
        try:
            trial = int(path.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        if trial not in keep and path.stat().st_size > max_bytes:
            path.unlink()
            removed.append(path)
    return removed


def onnx_inputs(path: Path | str) -> list[dict]:
    """Names, element types and shapes (symbolic dimensions by name) of an ONNX graph's inputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in init:
            continue
        t = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
    return out


def write_sidecar(engine_path: Path | str, provenance: Mapping[str, Any], verification: Mapping[str, Any]) -> Path:
    """Write ``<engine>.json``: the engine's checksum and inputs, ``provenance`` (policy, run,
    task, target, versions, fine-tuning) and ``verification`` (tolerance, observed error,
    latency, runtime metric, ``ok`` and the problems found)."""
    engine_path = Path(engine_path)
    body = {
        "schema": SIDECAR_SCHEMA,
        "engine": engine_path.name,
        "sha256": file_sha256(engine_path),
        "size_bytes": engine_path.stat().st_size,
        **dict(provenance),
        "verification": dict(verification),
    }
    if engine_path.suffix == ".onnx":
        body["inputs"] = onnx_inputs(engine_path)
    path = sidecar_path(engine_path)
    atomic_write_json(path, body)
    return path


def read_sidecar(engine_path: Path | str) -> dict | None:
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
