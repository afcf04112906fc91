"""Search spaces as data: ``search_spaces/<name>.yaml`` -> a validated :class:`Space`.

The file format is documented in ``search_spaces/README.md``.  A :class:`Space` is turned into an
Optuna define-by-run function by :class:`DefineByRun` (a picklable callable, so Ray can restore
an experiment that uses it).  Every mistake in a file raises :class:`zsl.errors.UserError` with
one sentence naming the file, the entry and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import search_spaces
from zsl.errors import UserError
from zsl.models import get_model, load_presets, validate_config
from zsl.userfiles import read_yaml_file

SPACE_DIR = Path(search_spaces.__file__).resolve().parent  # package data: there in editable and plain installs
TOP_KEYS = {"model", "preset", "profiles", "params", "published", "description"}
PROFILE_KEYS = {"preset", "fixed"}
PROFILES = ("cpu", "gpu", "demo")  # names --profile auto picks (hpo.experiment.SearchOptions.resolved_profile)
PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "when"},
    "int": {"type", "low", "high", "step", "log", "when"},
    "categorical": {"type", "choices", "when"},
    "fixed": {"type", "value", "when"},
}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: kind "float" | "int" | "categorical" | "fixed" and its domain.

    ``when``: {other_param: value or [values]} -- the parameter exists only when every named
    (earlier, categorical or fixed) parameter takes one of the given values.
    """

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple = ()
    value: Any = None
    when: dict = field(default_factory=dict)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's domain."""
        if self.kind == "fixed":
            return value == self.value
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Space:
    """A validated search space: model, base presets, ordered params, the published point."""

    name: str
    path: str
    model: str
    preset: str | None
    params: tuple[Param, ...]
    published: dict
    profiles: dict = field(default_factory=dict)  # name -> {"preset": str | None, "fixed": {key: value}}

    def specialise(self, profile: str) -> tuple["Space", str | None, dict]:
        """(space, base preset, base overrides) under run profile ``profile`` (cpu, gpu, or a name of
        the space's ``profiles``), for real and simulated data alike.

        A profile's ``preset`` replaces ``preset``; every ``fixed`` key that is a param becomes a
        fixed param (neither sampled nor shown as searched); its other keys become overrides under
        every trial.  A profile the space does not define leaves the space as written.
        """
        entry = self.profiles.get(profile)
        if entry is None:
            return self, self.preset, {}
        pinned = entry.get("fixed") or {}
        params = tuple(Param(p.name, "fixed", value=pinned[p.name], when=p.when) if p.name in pinned else p
                       for p in self.params)
        published = {k: v for k, v in self.published.items() if k not in pinned}
        names = {p.name for p in self.params}
        overrides = {k: v for k, v in pinned.items() if k not in names}
        space = replace(self, params=params, published=published)
        return space, entry.get("preset") or self.preset, overrides

    def sampled_names(self) -> list[str]:
        return [p.name for p in self.params if p.kind != "fixed"]


def resolve_space_path(space: str) -> Path:
    """``d2sc`` -> search_spaces/d2sc.yaml; a path to a .yaml file is taken as is."""
    path = Path(space).expanduser()
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise UserError(f"search space file {path} does not exist: pass --space NAME or an existing .yaml file.")
        return path
    path = SPACE_DIR / f"{space}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SPACE_DIR.glob("*.yaml")))
        raise UserError(f"unknown search space '{space}': pass --space with one of {names} or a .yaml file path.")
    return path


def read_space_doc(space: str) -> tuple[Any, str, str]:
    """(parsed YAML document, file path, space name) of a space (name under search_spaces/ or a YAML path)."""
    path = resolve_space_path(space)
    _, doc = read_yaml_file(path, f"search space file {path}")
    return doc, str(path), path.stem


def load_space(space: str) -> Space:
    """Read and validate a space (name under search_spaces/ or a YAML path)."""
    return parse_space(*read_space_doc(space))


def parse_space(doc: Any, where: str, name: str) -> Space:
    """Validate a parsed YAML document ``doc`` (from file ``where``) into a :class:`Space`."""
    if not isinstance(doc, dict):
        raise UserError(f"search space file {where} must be a mapping with keys model, preset, params: fix the file.")
    if "simulated" in doc:
        raise UserError(f"search space file {where}: the 'simulated' section is now a run profile: rename it to "
                        "'profiles: {cpu: {preset: ..., fixed: {...}}}' (used by --profile cpu on any data).")
    _check_keys(doc, TOP_KEYS, where, "top level")
    if "model" not in doc or "params" not in doc:
        raise UserError(f"search space file {where} needs the keys 'model' and 'params': add them.")
    model = doc["model"]
    if not isinstance(model, str):
        raise UserError(f"search space file {where}: 'model' must be a model name string: fix it.")
    try:
        config_cls = get_model(model).Config
    except UserError as err:
        raise UserError(f"search space file {where}: {err}") from None
    presets = load_presets(model)
    preset = _check_preset(doc.get("preset"), presets, model, where, "preset")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise UserError(f"search space file {where}: 'profiles' must be a mapping of profile name: {{preset, fixed}}: fix it.")
    checked = {}
    for pname, entry in profiles.items():
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise UserError(f"search space file {where}: profile '{pname}' must be a mapping with 'preset' and/or 'fixed': fix it.")
        _check_keys(entry, PROFILE_KEYS, where, f"profile '{pname}'")
        _check_preset(entry.get("preset"), presets, model, where, f"profiles.{pname}.preset")
        fixed = entry.get("fixed") or {}
        if not isinstance(fixed, dict):
            raise UserError(f"search space file {where}: 'profiles.{pname}.fixed' must be a mapping of hyperparameter: value: fix it.")
        _check_values(config_cls, fixed, model, where, f"profiles.{pname}.fixed")
        checked[str(pname)] = {"preset": entry.get("preset"), "fixed": dict(fixed)}
    raw_params = doc["params"]
    if not isinstance(raw_params, dict) or not raw_params:
        raise UserError(f"search space file {where}: 'params' must be a non-empty mapping of hyperparameter: spec: fix it.")
    params: list[Param] = []
    for pname, spec in raw_params.items():
        params.append(_parse_param(str(pname), spec, params, config_cls, model, where))
    published = _check_published(doc.get("published"), params, where)
    return Space(name, where, model, preset, tuple(params), published, checked)


def _check_keys(mapping: dict, allowed: set, where: str, what: str) -> None:
    unknown = sorted(set(map(str, mapping)) - allowed)
    if unknown:
        raise UserError(f"search space file {where}: unknown key '{unknown[0]}' at {what}: use one of {', '.join(sorted(allowed))}.")


def _check_preset(preset: Any, presets: dict, model: str, where: str, key: str) -> str | None:
    if preset is None:
        return None
    if preset not in presets:
        raise UserError(f"search space file {where}: {key} '{preset}' is not a preset of model '{model}': choose one of {', '.join(sorted(presets)) or 'none'}.")
    return preset


def _check_values(config_cls: type, values: dict, model: str, where: str, what: str) -> None:
    """Every key must be a hyperparameter of the model and every value of its type."""
    bad = next((key for key in values if not isinstance(key, str)), None)
    if bad is not None:
        raise UserError(f"search space file {where}, {what}: key {bad!r} is not a name: write hyperparameter names "
                        "as text.")
    try:
        validate_config(config_cls, values, where=f"model '{model}'")
    except UserError as err:
        raise UserError(f"search space file {where}, {what}: {err}") from None


def _parse_param(name: str, spec: Any, earlier: list[Param], config_cls: type, model: str, where: str) -> Param:
    """One ``params`` entry -> a validated :class:`Param` (ranges, types, conditions)."""
    at = f"search space file {where}, param '{name}'"
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_KEYS:
        raise UserError(f"{at}: give a mapping with 'type' one of {', '.join(PARAM_KEYS)}.")
    kind = spec["type"]
    _check_keys(spec, PARAM_KEYS[kind], where, f"param '{name}'")
    when = _check_when(spec.get("when"), earlier, at)
    if kind == "fixed":
        if "value" not in spec:
            raise UserError(f"{at}: a fixed param needs 'value': add it.")
        param = Param(name, kind, value=spec["value"], when=when)
        samples = [param.value]
    elif kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{at}: 'choices' must be a non-empty list: fix it.")
        param = Param(name, kind, choices=tuple(choices), when=when)
        samples = list(choices)
    else:
        param = _parse_range(name, kind, spec, when, at)
        samples = [param.low, param.high]
    for value in samples:
        _check_values(config_cls, {name: value}, model, where, f"param '{name}'")
        default = getattr(config_cls(), name)
        if value is None and default is not None:
            raise UserError(f"{at}: null is not a value of '{name}' (a {type(default).__name__}): give a value, or "
                            f"drop the param to keep the model's default {default!r}.")
    return param


def _parse_range(name: str, kind: str, spec: dict, when: dict, at: str) -> Param:
    low, high = spec.get("low"), spec.get("high")
    number = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise UserError(f"{at}: '{key}' must be a finite {'integer' if kind == 'int' else 'number'}, got {value!r}: fix it.")
    if not low < high:
        raise UserError(f"{at}: the range is empty or inverted (low {low} >= high {high}): make low < high.")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{at}: 'log' must be true or false, got {log!r}: fix it.")
    if log and low <= 0:
        raise UserError(f"{at}: a log-scale range needs low > 0, got {low}: raise low or set log: false.")
    step = spec.get("step", 1) if kind == "int" else None
    if kind == "int" and (isinstance(step, bool) or not isinstance(step, int) or step < 1 or (log and step != 1)):
        raise UserError(f"{at}: 'step' must be a positive integer (1 with log: true), got {step!r}: fix it.")
    if kind == "float":
        low, high = float(low), float(high)
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _check_when(when: Any, earlier: list[Param], at: str) -> dict:
    """``when: {param: value | [values]}`` naming earlier categorical/fixed params -> {param: tuple(values)}."""
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise UserError(f"{at}: 'when' must be a mapping {{param: value}}: fix it.")
    by_name = {p.name: p for p in earlier}
    out = {}
    for other, values in when.items():
        values = tuple(values) if isinstance(values, list) else (values,)
        cond = by_name.get(other)
        if cond is None or cond.kind not in {"categorical", "fixed"}:
            raise UserError(f"{at}: 'when' names '{other}', which must be a categorical or fixed param listed before it: reorder or fix.")
        bad = [v for v in values if not cond.contains(v)]
        if bad:
            raise UserError(f"{at}: 'when' value {bad[0]!r} is not a possible value of '{other}': fix it.")
        out[str(other)] = values
    return out


def _check_published(published: Any, params: list[Param], where: str) -> dict:
    """The published point: values of sampled params, each inside its range."""
    if published is None:
        return {}
    if not isinstance(published, dict):
        raise UserError(f"search space file {where}: 'published' must be a mapping of param: value: fix it.")
    by_name = {p.name: p for p in params}
    for key, value in published.items():
        param = by_name.get(key)
        if param is None or param.kind == "fixed":
            raise UserError(f"search space file {where}: published key '{key}' is not a sampled param of this space: remove it or add the param.")
        if not param.contains(value):
            raise UserError(f"search space file {where}: published value {key}={value!r} lies outside its param's range: widen the range or fix the value.")
    return dict(published)


def active(param: Param, chosen: dict) -> bool:
    """Whether ``param``'s ``when`` conditions hold for the values ``chosen`` so far."""
    return all(chosen.get(other) in values for other, values in param.when.items())


class DefineByRun:
    """The Optuna define-by-run function of a :class:`Space` (picklable; lives in an importable module).

    Called with an Optuna trial (or Ray's captor around one); suggests every active sampled param
    in file order and returns the active fixed params as constants.
    """

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial) -> dict:
        chosen: dict = {}
        constants: dict = {}
        for p in self.space.params:
            if not active(p, chosen):
                continue
            if p.kind == "fixed":
                chosen[p.name] = constants[p.name] = p.value
            elif p.kind == "categorical":
                chosen[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                chosen[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step, log=p.log)
            else:
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        return constants


class _PinnedTrial:
    """A stand-in Optuna trial for :class:`DefineByRun`: suggests ``pins``, else the published value, else the
    low end or the first choice; records what it suggested in ``params``."""

    def __init__(self, space: Space, pins: dict) -> None:
        self.space, self.pins, self.params = space, pins, {}

    def _pick(self, name: str, default: Any) -> Any:
        self.params[name] = self.pins.get(name, self.space.published.get(name, default))
        return self.params[name]

    def suggest_categorical(self, name, choices):
        return self._pick(name, choices[0])

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._pick(name, low)

    def suggest_float(self, name, low, high, log=False):
        return self._pick(name, low)


def check_model_ranges(space: Space, base_configs: dict) -> None:
    """UserError when the model refuses a value a trial of ``space`` could get (its own checks, as its trainer
    runs them), so that a range beyond the model's valid one is refused at load, not trial by trial.

    Checked on every dataset's base config: the published point, then each sampled param at each end of its
    range and at each choice (with its ``when`` conditions met, other params at their published value)."""
    from zsl.run import check_model_config

    points = [(None, {})]
    for p in space.params:
        if p.kind == "fixed":
            continue
        conditions = {other: values[0] for other, values in p.when.items()}
        values = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
        points += [(p.name, {**conditions, p.name: value}) for value in values]
    for name, pins in points:
        trial = _PinnedTrial(space, pins)
        constants = DefineByRun(space)(trial)
        setting = {**trial.params, **constants}
        if name is not None and name not in trial.params:
            continue  # not active under its own conditions (a condition of a condition)
        for dataset, base in base_configs.items():
            try:
                check_model_config(space.model, {**base, **setting})
            except UserError as err:  # blame the pinned param if the model names it, else the first it names
                named = [n for n in re.findall(r"'(\w+)'", str(err)) if n in setting]
                culprit = name if name in named else (named[0] if named else name)
                what = (f"param '{culprit}': the value {setting[culprit]!r}" if culprit is not None
                        else "the published point with the fixed params")
                fix = "narrow the range or drop that choice" if culprit is not None else "fix those values"
                raise UserError(f"search space file {space.path}, {what} is refused by model '{space.model}' on "
                                f"{dataset} ({str(err).rstrip('.')}): {fix}.") from None


def published_point(space: Space) -> dict:
    """The published setting restricted to params active under it (for points_to_evaluate)."""
    chosen = {p.name: p.value for p in space.params if p.kind == "fixed"}
    chosen.update(space.published)
    return {p.name: space.published[p.name] for p in space.params
            if p.kind != "fixed" and p.name in space.published and active(p, chosen)}


def published_params(space: Space) -> dict:
    """The params a trial of the published setting is given: the space's fixed constants and its published point."""
    return {**{p.name: p.value for p in space.params if p.kind == "fixed"}, **published_point(space)}
