"""The method settings form of VoxMetric Train, built from the method registry (no Qt).

Every field of every registered method's config dataclass
(:func:`voxmetric.methods.config_fields`) becomes one parameter of the module's parameter node,
``method_<field>``; the form shows the fields of the chosen method with that preset's defaults
(``get_method(name).default_config()``), and the values reach ``voxmetric train`` as
``--field value`` flags (:func:`method_flags`). A new method file needs no change here or in
the module. Tuple fields are edited as comma-separated text ("H,C").
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PARAM_PREFIX = "method_"
#: Form field kinds: which widget edits it and which type the parameter node stores.
KINDS = ("bool", "int", "float", "text")


@dataclass(frozen=True)
class FormField:
    """One row of the form: the config field ``name``, its parameter-node name, the widget
    ``kind`` (bool → check box, int → spin box, float → double spin box, text → line edit),
    the label, the help text (tooltip) and this preset's value in form terms."""

    name: str
    parameter: str
    kind: str
    label: str
    help: str
    default: Any


def kind_of(tp: Any) -> str:
    """The form kind of a config field type (bool, int, float, str, tuple[...])."""
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is str or typing.get_origin(tp) is tuple:
        return "text"
    raise TypeError(f"config field type {tp!r} has no form widget (use bool/int/float/str/tuple)")


def to_form(value: Any, kind: str) -> Any:
    """A config value as the form holds it (tuples → "a,b", numbers as such)."""
    if kind == "text":
        return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    return bool(value)


def parameter_fields() -> dict[str, tuple[str, Any]]:
    """``{parameter name: (kind, default)}`` for every field of every registered method. A field
    name that methods type differently (``patch``: an int for 2.5D methods, three sizes for 3D
    ones) is edited as text, as ``voxmetric train``'s flags take it; each method checks it."""
    from voxmetric.methods import config_fields, method_classes

    kinds: dict[str, set[str]] = {}
    defaults: dict[str, Any] = {}
    for cls in method_classes():
        for spec in config_fields(cls.config_cls):
            kinds.setdefault(PARAM_PREFIX + spec.name, set()).add(kind_of(spec.type))
            defaults.setdefault(PARAM_PREFIX + spec.name, spec.default)
    out: dict[str, tuple[str, Any]] = {}
    for name, ks in kinds.items():
        kind = ks.pop() if len(ks) == 1 else "text"
        out[name] = (kind, to_form(defaults[name], kind))
    return out


def method_form(method: str) -> list[FormField]:
    """The rows for ``method`` (a preset name), defaults = the preset's values."""
    from voxmetric.methods import config_fields, get_method

    m = get_method(method)
    preset = m.default_config()
    kinds = parameter_fields()
    rows = []
    for spec in config_fields(m.config_cls):
        kind = kinds[PARAM_PREFIX + spec.name][0]
        rows.append(FormField(spec.name, PARAM_PREFIX + spec.name, kind, spec.name.replace("_", " ") + ":",
                              spec.help, to_form(getattr(preset, spec.name), kind)))
    return rows


def method_defaults(method: str, start_from: str = "") -> dict[str, Any]:
    """``{parameter name: value}`` that resets the form to ``method``'s preset, or, fine-tuning
    the model ``start_from``, to that package's settings (which ``voxmetric train --init-from``
    starts from; :func:`voxmetric.models.init_config`)."""
    rows = method_form(method)
    if not start_from:
        return {f.parameter: f.default for f in rows}
    from voxmetric import models
    from voxmetric.methods import get_method

    cfg = models.init_config(models.read_card(models.find_model(start_from).path), get_method(method))
    return {f.parameter: to_form(getattr(cfg, f.name), f.kind) for f in rows}


def method_flags(method: str, values: Mapping[str, Any]) -> list[str]:
    """``voxmetric train`` flags for the form ``values`` (keyed by parameter name) that differ
    from ``method``'s preset, e.g. ``["--base", "8", "--augment", "false"]``; values are
    checked by the method's own config (ConfigError with the field's name on a bad one)."""
    from voxmetric.methods import get_method

    m = get_method(method)
    rows = method_form(method)
    given = {f.name: values[f.parameter] for f in rows if f.parameter in values}
    cfg = m.make_config(given)
    preset = m.default_config()
    flags: list[str] = []
    for f in rows:
        value = getattr(cfg, f.name)
        if f.name in given and value != getattr(preset, f.name):
            text = to_form(value, f.kind)
            flags += ["--" + f.name.replace("_", "-"), str(text).lower() if f.kind == "bool" else str(text)]
    return flags


def form_values(parameters: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The subset of ``parameters`` (all parameter-node values) that ``method``'s form shows."""
    return {f.parameter: parameters[f.parameter] for f in method_form(method) if f.parameter in parameters}
