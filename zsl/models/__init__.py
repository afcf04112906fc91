"""Model registry and configuration resolution.

Every model is a class implementing :class:`zsl.trainer.Trainer` with a class attribute
``Config``: a dataclass whose fields are the model's hyperparameters with their defaults.
Presets are data: ``zsl/presets/<model>.yaml`` (see :func:`load_presets`).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import yaml

from zsl.errors import UserError

# name -> "module:Class"; a new method is one more line here plus its module and presets file.
MODELS: dict[str, str] = {
    "eszsl": "zsl.models.eszsl:ESZSL",
    "d2sc": "zsl.models.d2sc:D2SC",
    "revcd": "zsl.models.revcd:RevCD",
    "dkgzsl": "zsl.models.dkgzsl:DKGZSL",
}

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def model_names() -> list[str]:
    return sorted(MODELS)


def get_model(name: str) -> type:
    """The Trainer class registered as ``name``; UserError for an unknown or missing one."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(model_names())}.")
    module_name, cls_name = MODELS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise UserError(f"model '{name}' is registered but not implemented yet ({module_name} is missing).") from err
        raise
    return getattr(module, cls_name)


def base_dataset_name(dataset: str) -> str:
    """'sim-AWA2' -> 'AWA2'; real names pass through.  Presets are keyed by the base name."""
    return dataset[4:] if dataset.startswith("sim-") else dataset


def load_presets(model: str) -> dict[str, dict]:
    """The presets file of ``model``: ``{preset: {"default": {...}, "<DATASET>": {...}}}``.

    File format (``zsl/presets/<model>.yaml``)::

        presets:
          paper:
            default: {lr: 1.0e-3}      # applies to every dataset
            AWA2: {att_dim_check: 85}  # per-dataset overrides, keyed by base name
    """
    path = PRESET_DIR / f"{model}.yaml"
    if not path.exists():
        return {}
    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    return doc.get("presets", {}) or {}


def preset_note(model: str, preset: str | None, dataset: str) -> str | None:
    """A line saying that ``preset`` has no entry for ``dataset`` (only its ``default`` applies), else None."""
    entry = load_presets(model).get(preset) if preset else None
    known = ", ".join(k for k in entry or {} if k != "default")
    if not known or base_dataset_name(dataset) in entry:  # no per-dataset values in this preset, or some for it
        return None
    return (f"preset '{preset}' of {model} has no entry for {dataset} (it has: {known}): its default values and "
            "the data's own dimensions are used")


def preset_names(model: str) -> list[str]:
    return sorted(load_presets(model))


def make_config(model: str, preset: str | None, dataset: str, overrides: dict[str, Any] | None = None) -> dict:
    """Resolve a model's configuration: defaults <- preset.default <- preset[dataset] <- overrides.

    Returns a plain dict of every field of ``Model.Config`` (validated: unknown keys and values
    of the wrong type raise UserError naming the key).
    """
    cls = get_model(model)
    merged: dict[str, Any] = {}
    if preset is not None:
        presets = load_presets(model)
        if preset not in presets:
            names = ", ".join(sorted(presets)) or "none"
            raise UserError(f"unknown preset '{preset}' for model '{model}': choose one of {names}.")
        entry = presets[preset] or {}
        merged.update(entry.get("default", {}) or {})
        merged.update(entry.get(base_dataset_name(dataset), {}) or {})
    merged.update(overrides or {})
    return validate_config(cls.Config, merged, where=f"model '{model}'")


def validate_config(config_cls: type, values: dict[str, Any], where: str) -> dict:
    """Check ``values`` against the dataclass ``config_cls`` and return the full config as a dict."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown hyperparameter '{unknown[0]}' for {where}: known keys are {', '.join(sorted(fields))}.")
    defaults = dataclasses.asdict(config_cls())
    out = dict(defaults)
    for key, value in values.items():
        out[key] = _coerce(key, value, defaults[key], where)
    return out


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """Coerce ``value`` to the type of ``default`` (int->float allowed, 'true' strings for bools)."""
    if default is None or value is None:
        return value
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
                return value.lower() in {"true", "1", "yes", "on"}
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return list(value)
    except (TypeError, ValueError):
        raise UserError(
            f"hyperparameter '{key}' of {where} must be of type {kind.__name__}, got {value!r}: fix the value."
        ) from None
    return value
