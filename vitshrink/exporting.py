"""Ship a trial's model: ONNX, TorchScript or safetensors + JSON config, each with a model card.

What each format holds, by how the trial is deployed:

- ``onnx``: the deployed model as an ONNX graph (dynamic batch, input ``images``, output
  ``logits``). A trial that ran an ONNX graph (the ONNX Runtime modes) holds it: it is written
  exactly as it was measured. Otherwise the float model is exported, then converted as its runtime
  registered (`vitshrink.compress.register_export`): torch's dynamic int8 becomes ONNX Runtime's
  dynamic quantization of the same float weights (not a bit-exact copy of torch's int8 kernels:
  the card records how well the two agree); bf16 is exported in float32.
- ``torchscript``: ``torch.jit.trace`` of the deployed torch model, or of the float model where
  the runtime ran the same float graph elsewhere (ONNX Runtime fp32, OpenVINO fp32).
- A runtime's int8 graph with no file of a format (ONNX Runtime int8 in TorchScript, OpenVINO's
  NNCF int8 in both) is refused with what to do instead.
- ``safetensors``: the float weights exactly as stored in the trial's artifact, with the config in
  the file's metadata and in ``<name>.config.json`` (rebuild with `vitshrink.compress.build`).

Every export is checked before it is reported done: the exported file is loaded back and run on
validation images, and the card records how far its outputs are from the torch model's.
The card (``<file>.card.json``) holds config, objectives, latency spread, val and test accuracy,
the target description, the teacher's accuracy and the library versions, and what deploying the
file needs besides it: the preprocessing from a raw image to the input (read, resize, crop, value
scale, channel order, the train split's mean and std; see `vitshrink.preprocessing`) and the class
names, index by index. An ONNX file carries those two in its own ``metadata_props`` as JSON
(keys ``vitshrink.preprocessing`` and ``vitshrink.classes``), so it is deployable on its own.

Example (not run as a doctest: it needs a stored study)::

    from vitshrink.studies import open_study
    export_trial(open_study("quickstart"), 3, "onnx", Path("model.onnx"))  # -> PosixPath('model.onnx')
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .compress import Export, export_of
from .compress.onnx_runtime import onnx_bytes
from .preprocessing import describe_preprocessing
from .spaces import CompressionConfig
from .techniques import deployment_of
from .search._schema import CONFIG_ATTR, DATA_ATTR, PREPROCESSING_ATTR, TEACHER_ATTR, TRAINING_ATTR

if TYPE_CHECKING:
    from .studies import StudyHandle

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "safetensors")
FLOAT_TOLERANCE = 1e-3  # max |onnx - torch| relative to the largest |logit|, for float graphs
CHECK_IMAGES = 16


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says why and what to do instead."""


def card_path(path: str | Path) -> Path:
    """Where the model card of an export at `path` lives: ``<path>.card.json``."""
    p = Path(path)
    return p.with_name(p.name + ".card.json")


def run_onnx(path_or_bytes: str | Path | bytes, x: torch.Tensor) -> torch.Tensor:
    """Logits of an ONNX model run by ONNX Runtime on the CPU."""
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.float().numpy()})[0])


def agreement(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """How close two logit batches are: max absolute difference (also relative to the largest
    reference logit), mean cosine similarity per image, and the fraction of equal argmax."""
    out, ref = out.float(), ref.float()
    diff = float((out - ref).abs().max())
    return {"max_abs_diff": diff, "rel_diff": diff / max(float(ref.abs().max()), 1e-12),
            "cosine": float(torch.nn.functional.cosine_similarity(out, ref, dim=1).mean()),
            "argmax_agreement": float((out.argmax(1) == ref.argmax(1)).float().mean())}


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float()


def _check_float(check: dict[str, float], what: str) -> None:
    if check["rel_diff"] > FLOAT_TOLERANCE:
        raise ExportError(f"the exported {what} differs from the torch model by {check['max_abs_diff']:.3g} "
                          f"(relative {check['rel_diff']:.3g} > {FLOAT_TOLERANCE}); the file was not kept, "
                          "re-run with --debug and report it")


def preprocessing(handle: StudyHandle) -> dict[str, Any]:
    """The study's preprocessing (stored by the search driver), or worked out from its data for
    studies searched before it was stored."""

    stored = handle.study.user_attrs.get(PREPROCESSING_ATTR)
    return stored if stored is not None else describe_preprocessing(handle.recipe.dataset, handle.data)


def class_names(handle: StudyHandle) -> list[str]:
    """The class names, index by index (the indices as text where the dataset names none)."""
    names = list(handle.data.class_names)
    return names if len(names) == handle.data.num_classes else [str(i) for i in range(handle.data.num_classes)]


def _write_onnx(path: Path, blob: bytes, handle: StudyHandle) -> None:
    """Write an ONNX graph with the preprocessing and class names in its metadata_props (the graph
    itself is untouched)."""
    import onnx  # heavy (0.7 s on top of import vitshrink), only ONNX export needs it

    model = onnx.load_from_string(blob)
    # the ONNX file's metadata keys (what a deployment reads), not study attributes
    props = {"vitshrink.preprocessing": json.dumps(preprocessing(handle), sort_keys=True),
             "vitshrink.classes": json.dumps(class_names(handle)), "vitshrink.study": handle.name}
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, **props})
    path.write_bytes(model.SerializeToString())


def _refuse(config: CompressionConfig, number: int, fmt: str) -> Export:
    """How `config`'s deployment is exported; ExportError where it has no file of format `fmt`."""
    export = export_of(deployment_of(config))
    if fmt in export.refuse:
        raise ExportError(f"trial {number} {export.refuse[fmt].replace('load_model(N)', f'load_model({number})')}")
    return export


def _export_onnx(handle: StudyHandle, number: int, config: CompressionConfig, path: Path, x: torch.Tensor
                 ) -> dict[str, Any]:

    export = _refuse(config, number, "onnx")
    deployed = handle.load_model(number)
    graph = getattr(deployed, "model_bytes", None)
    if isinstance(graph, (bytes, bytearray)):  # a runtime that runs an ONNX graph: the graph measured in the trial
        _write_onnx(path, bytes(graph), handle)
        check = agreement(run_onnx(path, x), _logits(deployed, x))
        _check_float(check, "ONNX graph")  # the same graph in the same runtime: equal up to thread scheduling
        return {"exported_model": f"the ONNX Runtime graph measured in the trial ({deployment_of(config)}, "
                                  f"{deployed.kind})", "checked_against": "the trial's deployed model", "check": check}
    float_model = handle.load_float_model(number)
    blob = onnx_bytes(float_model, x[:1])
    _write_onnx(path, export.onnx(blob) if export.onnx else blob, handle)
    if export.checked_against == "deployed":  # a conversion of the deployed model's arithmetic
        return {"exported_model": export.onnx_what, "checked_against": f"the torch {deployment_of(config)} model",
                "check": agreement(run_onnx(path, x), _logits(deployed, x))}
    check = agreement(run_onnx(path, x), _logits(float_model, x))
    _check_float(check, "ONNX graph")
    return {"exported_model": export.onnx_what, "checked_against": "the float torch model", "check": check}


def _export_torchscript(handle: StudyHandle, number: int, config: CompressionConfig, path: Path, x: torch.Tensor
                        ) -> dict[str, Any]:

    export = _refuse(config, number, "torchscript")
    runtime = deployment_of(config)
    if export.torchscript:
        model, what = handle.load_float_model(number), export.torchscript
    else:
        model, what = handle.load_model(number), f"the deployed torch model ({runtime})"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model.eval(), (x[:2],), check_trace=False)
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types; one message for all
        raise ExportError(f"trial {number} ({runtime}) cannot be traced to TorchScript "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); export it with --format onnx") \
            from None
    torch.jit.save(traced, str(path))
    check = agreement(_logits(torch.jit.load(str(path)), x), _logits(model, x))  # another batch size than traced
    _check_float(check, "TorchScript module")
    return {"exported_model": what, "checked_against": "the torch model", "check": check}


def _export_safetensors(handle: StudyHandle, number: int, config: CompressionConfig, path: Path, x: torch.Tensor
                        ) -> dict[str, Any]:
    state, stored = handle.float_weights(number)
    teacher = handle.study.user_attrs.get(TEACHER_ATTR)
    doc = {"config": stored.to_dict(), "teacher": teacher, "input_shape": list(x.shape[1:]),
           "num_classes": handle.data.num_classes, "study": handle.name, "trial": number,
           "preprocessing": preprocessing(handle), "classes": class_names(handle)}
    save_file(state, str(path), metadata={"format": "vitshrink-float-1", "config": stored.to_json(),
                                          "teacher": json.dumps(teacher, sort_keys=True)})
    cfg_path = path.with_name(path.stem + ".config.json")
    cfg_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    model = handle.load_float_model(number)
    ref = _logits(model, x)
    model.load_state_dict(load_file(str(path)))  # the file's weights fit the architecture the config builds
    check = agreement(_logits(model, x), ref)
    return {"exported_model": "the float weights saved in the trial (before quantization) and the config",
            "files": [str(path), str(cfg_path)], "checked_against": "the float torch model", "check": check}


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript, "safetensors": _export_safetensors}


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries an exported model depends on (None when not installed)."""
    out: dict[str, str | None] = {"vitshrink": __version__}
    for name in ("torch", "timm", "optuna", "onnx", "onnxruntime", "safetensors", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def model_card(handle: StudyHandle, number: int, fmt: str, path: Path, info: dict[str, Any],
               input_shape: list[int]) -> dict[str, Any]:
    """The JSON-able card written beside an export."""
    d = handle.describe(number)
    lat = (d.get("latency") or {}).get("batches") or [{}]
    return {
        "study": handle.name, "trial": number, "format": fmt, "file": str(path), "files": info.get("files", [str(path)]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "label": d["label"], "role": d["role"], "config": d["config"],
        "objectives": d["objectives"], "test_accuracy": d["test_accuracy"],
        "teacher_accuracy": d["teacher_accuracy"], "accuracy_drop": d["accuracy_drop"],
        "metrics": d["metrics"],  # every metric measured, by name (the objectives and the others)
        "latency": {"median_ms": d["metrics"].get("latency_ms"), "iqr_ms": d["latency_iqr_ms"],
                    "cv": d["latency_cv"], "batches": lat},
        "params": d["params"], "macs": d["macs"], "target": handle.target,
        "data": handle.study.user_attrs.get(DATA_ATTR),
        "input": {"name": "images", "shape": ["batch", *input_shape], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", handle.data.num_classes]},
        "preprocessing": preprocessing(handle), "classes": class_names(handle),
        "trained_on": handle.study.user_attrs.get(TRAINING_ATTR),
        "exported_model": info["exported_model"], "checked_against": info["checked_against"],
        "check": info["check"], "versions": library_versions(),
    }


def export_trial(handle: StudyHandle, trial_number: int, fmt: str, path: str | Path) -> Path:
    """Export completed trial `trial_number` of `handle` as `fmt` to `path`; writes `card_path(path)` too.

    Args:
        handle: An open study (`vitshrink.open_study`).
        trial_number: A COMPLETE trial (see `handle.pareto()`).
        fmt: "onnx", "torchscript" or "safetensors" (see the module docstring for what each holds).
        path: The file to write; its folder is created.

    Returns:
        `path`. Raises ExportError (bad format, a form the trial has not) or TrialNotAvailable.

    Example (not run as a doctest: it needs a stored study)::

        export_trial(open_study("quickstart"), 3, "torchscript", "m.pt")
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    trial = handle.trial(trial_number)
    config = CompressionConfig.from_dict(trial.user_attrs[CONFIG_ATTR])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = handle.data.val.images(range(min(CHECK_IMAGES, len(handle.data.val))))
    log.info("exporting trial %d of %r (%s) as %s to %s", trial_number, handle.name, config.summary(), fmt, path)
    try:
        info = _EXPORTERS[fmt](handle, trial_number, config, path, x)
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written or unchecked file behind
        raise
    card = model_card(handle, trial_number, fmt, path, info, list(x.shape[1:]))
    card_path(path).write_text(json.dumps(card, indent=2, default=str) + "\n")
    c = info["check"]
    log.info("wrote %s (%.0f kB); vs %s: max |diff| %.2g, argmax agreement %.3f", path, path.stat().st_size / 1e3,
             info["checked_against"], c["max_abs_diff"], c["argmax_agreement"])
    return path


__all__ = ["FORMATS", "ExportError", "agreement", "card_path", "class_names", "export_trial", "library_versions",
           "model_card", "preprocessing", "run_onnx"]
