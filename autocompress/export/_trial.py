"""Export one trial of a finished run in a chosen format, verified, with its sidecar.

The candidate is rebuilt from the trial's policy (``compress.apply``) and its fine-tuned
weights are loaded from ``candidates/trial-NNNN.pt``. Formats:

- ``onnx``: the policy's own precisions (QDQ int8 where it says int8): the search's engine.
- ``onnx-int8``: every layer the policy left in float32 becomes int8 (weights kept,
  activation ranges calibrated again); ``--final-finetune`` lets it recover.
- ``onnx-fp16``: every layer the policy left in float32 runs in float16.
- ``tensorrt``: a TensorRT engine built from the policy's ONNX with its per-layer precisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from autocompress.errors import UserError
from autocompress.export._artifacts import candidate_path, file_sha256, load_candidate_weights, transfer_weights, write_sidecar
from autocompress.spaces import Policy

__all__ = ["FORMATS", "ExportResult", "export_trial", "retarget_float_layers"]

FORMATS = ("onnx", "onnx-int8", "onnx-fp16", "tensorrt")
_SUFFIX = {"onnx": ".onnx", "onnx-int8": ".int8.onnx", "onnx-fp16": ".fp16.onnx", "tensorrt": ".plan"}


@dataclass(frozen=True)
class ExportResult:
    engine: Path
    sidecar: Path
    ok: bool
    problems: tuple[str, ...]
    metric: float | None
    latency_ms: float


def retarget_float_layers(policy: Policy, layers: list[str], bits: int) -> Policy:
    """``policy`` with every float32 layer among ``layers`` set to ``bits``; other choices kept."""
    new_bits = dict(policy.bits)
    for name in layers:
        if policy.bits_of(name) == 32:
            new_bits[name] = bits
    return Policy(dict(policy.prune), new_bits, dict(policy.rank))


def _trial_attrs(run_dir: Path, trial: int) -> dict:
    from autocompress.study import open_study

    study = open_study(run_dir)
    numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
    if trial not in numbers:
        raise UserError(f"Run {str(run_dir)!r} has no trial {trial}; its trials are 0..{max(numbers, default=-1)}.")
    attrs = dict(numbers[trial].user_attrs)
    if attrs.get("status") != "completed" or "duplicate_of" in attrs:
        dup = f" (a repeat of trial {attrs['duplicate_of']})" if "duplicate_of" in attrs else ""
        raise UserError(f"Trial {trial} was not fine-tuned ({attrs.get('status', 'unknown')}{dup}); pick a completed trial, see `autocompress runs show`.")
    return attrs


def export_trial(
    run_dir: Path | str, trial: int, fmt: str = "onnx", out_dir: Path | str | None = None, final_finetune_steps: int = 0,
) -> ExportResult:
    """Rebuild trial ``trial`` of ``run_dir``, optionally distill it ``final_finetune_steps``
    more steps, export it as ``fmt`` into ``out_dir`` (default ``run_dir/exports``), verify
    it, and write its sidecar."""
    from autocompress import compress
    from autocompress._io import make_folder
    from autocompress.evaluators import DistillConfig, distill, evaluate
    from autocompress.export._onnx import export_engine
    from autocompress.inventory import build_inventory
    from autocompress.latency_lut import backend_for_profile
    from autocompress.spaces import SpaceConfig
    from autocompress.study import _versions, check_int8_weight_width, load_recorded_task, read_run_record
    from autocompress.task import as_input_tuple

    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format {fmt!r}; choose one of {list(FORMATS)}.")
    if final_finetune_steps < 0:
        raise UserError(f"--final-finetune must be at least 0, but got {final_finetune_steps}.")
    if not (run_dir / "run.json").is_file() or not (run_dir / "study.db").is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no run.json and study.db); give the --run-dir of a search.")
    if fmt == "tensorrt":
        from autocompress.export._tensorrt import require_tensorrt

        require_tensorrt()
    manifest = read_run_record(run_dir)
    check_int8_weight_width(manifest, run_dir, "export from it")
    attrs = _trial_attrs(run_dir, trial)
    checkpoint = candidate_path(run_dir, trial)
    if not checkpoint.is_file():
        raise UserError(
            f"Trial {trial} has no fine-tuned weights in {str(checkpoint.parent)!r} (off the front and deleted at the end of the run); "
            "export a front member (`autocompress runs show`)."
        )
    out = Path(out_dir) if out_dir is not None else run_dir / "exports"
    make_folder(out, create=False, option="--out")  # before the rebuild and any fine-tuning; the engine's write creates it

    config = manifest["config"]
    task = load_recorded_task(manifest)
    space = config["space"]
    space_config = SpaceConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in space.items()})
    inventory = build_inventory(task.model, task.example_inputs, task.ignored_layers)
    calib: list = []
    for inputs, _ in task.train_loader:
        calib.append(as_input_tuple(inputs))
        if len(calib) >= config.get("calibration_batches", 4):
            break
    policy = Policy.from_dict(attrs["policy"])
    target = {"onnx-int8": retarget_float_layers(policy, list(inventory.layers), 8),
              "onnx-fp16": retarget_float_layers(policy, list(inventory.layers), 16)}.get(fmt, policy)
    candidate = compress.apply(task.model, inventory, target, task.example_inputs, calib, space_config.channel_multiple,
                               space_config.importance)
    if target == policy:
        load_candidate_weights(candidate, checkpoint)
    else:
        transfer_weights(checkpoint, candidate, calib)

    finetune: dict[str, Any] = {"search_steps": config["distill"]["steps"], "final_steps": final_finetune_steps}
    if final_finetune_steps:
        distill_dict = dict(config["distill"])
        distill_dict["feature_layers"] = tuple(distill_dict.get("feature_layers") or ())
        distill_config = replace(DistillConfig(**distill_dict), steps=final_finetune_steps)
        torch.manual_seed(config.get("seed", 0) * 100003 + trial)
        before = evaluate(candidate, task.eval_loader, task.metric)
        t0 = time.perf_counter()
        losses = distill(candidate, task.model, task.train_loader, distill_config)
        finetune.update(metric_before=before, metric_after=evaluate(candidate, task.eval_loader, task.metric),
                        final_loss=losses[-1] if losses else None, seconds=time.perf_counter() - t0)

    profile = manifest["profile"]
    backend = backend_for_profile(profile, int(task.example_inputs[0].shape[0]))  # timed as the search timed it
    onnx_path = out / f"trial-{trial:04d}{_SUFFIX[fmt] if fmt != 'tensorrt' else '.trt.onnx'}"
    check_batches = [next(iter(task.eval_loader))]
    engine = export_engine(candidate, task.example_inputs, onnx_path, backend, check_batches, task.metric, task.eval_loader,
                           task.extra_metrics)
    verification = {
        "runtime": "onnxruntime", "tolerance": engine.tolerance, "relative_error": engine.relative_error,
        "max_abs_error": engine.max_abs_error, "output_cosine": engine.output_cosine, "top1_agreement": engine.top1_agreement,
        "integer_nodes": engine.integer_nodes, "int8_layers": engine.int8_layers,
        "latency_ms": engine.latency_us / 1000, "latency_p10_ms": engine.latency_p10_us / 1000,
        "latency_p90_ms": engine.latency_p90_us / 1000,
        "latency_method": f"{backend.name}, {profile.get('threads', 1)} thread(s), median of timed runs (the latency table's backend)",
        "runtime_metric": engine.runtime_metric, "runtime_extra_metrics": engine.runtime_extra_metrics,
        "ok": engine.ok, "problems": list(engine.problems),
    }
    engine_path, metric, latency_ms = onnx_path, engine.runtime_metric, engine.latency_us / 1000
    if fmt == "tensorrt":
        from autocompress.export._tensorrt import build_and_verify, layer_precisions

        trt = build_and_verify(onnx_path, out / f"trial-{trial:04d}.plan", candidate, task.example_inputs, check_batches,
                               layer_precisions(target, list(inventory.layers)), task.metric, task.eval_loader)
        verification = {"runtime": "tensorrt", **trt.to_dict(), "onnx_source": onnx_path.name}
        engine_path, metric, latency_ms = Path(trt.path), trt.runtime_metric, trt.latency_ms
    provenance = {
        "format": fmt, "trial": trial, "policy": target.to_dict(), "searched_policy": policy.to_dict(),
        "run": str(run_dir), "task": manifest["task"], "task_spec": manifest["task_spec"],
        "task_fingerprint": manifest["task_fingerprint"], "metric_name": manifest["metric_name"],
        "target_profile": manifest["profile"], "versions": _versions(), "search_versions": manifest.get("versions", {}),
        "checkpoint": {"path": str(checkpoint.relative_to(run_dir)), "sha256": file_sha256(checkpoint)},
        "finetune": finetune,
    }
    sidecar = write_sidecar(engine_path, provenance, verification)
    return ExportResult(engine_path, sidecar, bool(verification["ok"]), tuple(verification["problems"]), metric, latency_ms)
