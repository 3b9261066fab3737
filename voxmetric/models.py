"""Model packages: a JSON card + safetensors weights, a local registry, pipelines, safe loading.

A *model package* is a folder (or a ``.zip`` of one) holding

- ``model.json``: the card, validated against ``model_card.schema.json`` (shipped beside this
  file): name, method, role (``localizer`` / ``refiner`` / ``joint``), modality (``ct`` / ``mr``
  / ``any``), ``classes`` (name, label value, colour and SNOMED CT terminology of each output
  class), method ``config``, ``data`` recipe (spacing, slab, patch, normalisation, region),
  ``training`` / ``validation`` summaries, ``intended_use``, ``demo``, and the fields
  :func:`save_package` fills in: ``format``, ``engine_version``, ``weights_sha256``,
  ``weights_bytes``, ``weights_dtype``, ``created``;
- ``weights.safetensors``: the state dict. Never a pickle (DESIGN.md rule 6);
- ``model.onnx`` (optional): the method's forward pass exported by :func:`save_package` (or
  :func:`add_onnx`) from exactly these weights and checked against torch before it was stored
  (:func:`voxmetric.runtime.verify_onnx`); the card's ``onnx`` block records its SHA-256, size,
  opset and the measured difference. On the CPU, :func:`load_pipeline` runs it with ONNX Runtime
  after the same size + SHA-256 check, without importing torch (issue 14).

Loading checks the card against the schema, then the size and SHA-256 of the weights *before*
any byte of them is deserialised; only safetensors is parsed (no pickle, no code execution).
Format 1 cards (before multi-class models) have no ``classes``: they are read as one class,
"Prostate" (:attr:`ModelPackage.classes`); new packages are written as format 2.

Registry: installed packages live in ``models_home() / "models"`` (``$VOXMETRIC_HOME`` or
``~/.voxmetric``); bundled read-only ones in ``<repo>/Resources/Models`` (a wheel carries them as ``voxmetric/bundled_models``; or
``$VOXMETRIC_BUNDLED_MODELS``). Bundled packages are listed first and win on equal names.

A *pipeline* names one localizer and one refiner: a file ``<name>.pipeline.json`` (or
``pipeline.json``) ``{"name": ..., "localizer": MODEL, "refiner": MODEL}`` in either models
folder. Without a name, :func:`resolve_pipeline` takes the first localizer and the first refiner
for the image's modality (bundled before installed, exact modality before ``any``; a ``joint``
model may fill either slot).

Modality policy (:func:`check_modality`): a ``ct`` model on an MR image, or an ``mr`` model on
a CT image, raises :class:`ModelError`; with ``strict=False`` (the user's explicit
"allow modality mismatch") it only warns. A model whose modality is ``any`` accepts both.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, is_dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ModelError
from .files import atomic_dir, atomic_open, discard, write_json

FORMAT = "voxmetric-model/2"
FORMATS = ("voxmetric-model/1", FORMAT)  # readable formats
CARD = "model.json"
WEIGHTS = "weights.safetensors"
ONNX = "model.onnx"
RUNTIMES = ("auto", "torch", "onnx")
PIPELINE_SUFFIX = ".pipeline.json"
ROLES = ("localizer", "refiner", "joint")
MODALITIES = ("ct", "mr", "any")
if TYPE_CHECKING:  # torch is imported where tensors are handled: listing models stays fast
    import torch

SCHEMA_PATH = Path(__file__).with_name("model_card.schema.json")
DEFAULT_INTENDED_USE = "research use only; not for clinical use"


@dataclass
class ModelPackage:
    """A loaded, verified package: ``card`` (dict), ``state_dict`` (name -> CPU tensor, floats as
    float32) and the ``path`` it came from."""

    card: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    path: Path

    @property
    def name(self) -> str:
        return self.card["name"]

    @property
    def role(self) -> str:
        return self.card["role"]

    @property
    def modality(self) -> str:
        return self.card["modality"]

    @property
    def method(self) -> str:
        return self.card["method"]

    @property
    def classes(self) -> tuple[str, ...]:
        return card_classes(self.card)


def card_classes(card: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of a card's output classes 1, 2, … (format 1 cards: ("Prostate",))."""
    return tuple(str(c["name"]) for c in sorted(card.get("classes") or [{"name": "Prostate", "value": 1}],
                                                key=lambda c: int(c["value"])))


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry (card fields only; weights not read)."""

    name: str
    role: str
    modality: str
    method: str
    path: Path
    bundled: bool
    demo: bool
    description: str = ""  # the card's free-text description (what it was trained on, for what)


@dataclass(frozen=True)
class PipelineInfo:
    """A named pipeline file: model names of its two stages."""

    name: str
    localizer: str
    refiner: str
    path: Path


# ---- card schema ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def card_schema() -> dict[str, Any]:
    """The JSON Schema of ``model.json`` (``voxmetric/model_card.schema.json``)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_card(card: Mapping[str, Any], where: str | Path = "model card") -> None:
    """Raise :class:`ModelError` listing every schema violation of ``card``."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(card_schema())
    errors = sorted(validator.iter_errors(dict(card)), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  - {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
        raise ModelError(
            f"{where} is not a valid VoxMetric model card:\n" + "\n".join(lines)
            + "\nFix model.json, or re-export the model with this engine (voxmetric.models.save_package)."
        )


def _jsonable(card: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, JSON-clean copy of ``card`` (tuples -> lists, numpy scalars -> numbers, Path -> str)."""

    def default(o: Any) -> Any:
        if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        if is_dataclass(o) and not isinstance(o, type):
            return {f.name: getattr(o, f.name) for f in fields(o)}
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")

    try:
        return json.loads(json.dumps(dict(card), default=default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ModelError(f"the model card cannot be written as JSON ({e}); use plain numbers, strings, lists and dicts") from e


# ---- save ----------------------------------------------------------------------------------
def _weights_bytes(state_dict: Mapping[str, Any], half: bool) -> bytes:
    import torch
    from safetensors.torch import save

    if not state_dict:
        raise ModelError("the state dict is empty: there are no weights to save")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                "put non-tensor settings in the card's config instead"
            )
        t = value.detach().to("cpu")
        if half and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[str(key)] = t.clone(memory_format=torch.contiguous_format)  # no shared storage
    return save(tensors, metadata={"format": "pt"})


def _complete_card(card: Mapping[str, Any], weights: bytes, half: bool) -> dict[str, Any]:
    from . import __version__

    full = _jsonable(card)
    full.setdefault("intended_use", DEFAULT_INTENDED_USE)
    full.setdefault("demo", False)
    full.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    full.update(
        format=FORMAT,
        engine_version=__version__,
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        weights_bytes=len(weights),
        weights_dtype="float16" if half else "float32",
    )
    return full


def _card_text(card: Mapping[str, Any]) -> str:
    return json.dumps(card, indent=2, sort_keys=False) + "\n"


def _check_free(target: Path, overwrite: bool) -> None:
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ModelError(
            f"{target} already exists; choose another output path, remove it first, or pass overwrite=True"
        )


def _write_package(target: Path, card: Mapping[str, Any], weights: bytes, overwrite: bool,
                   extra: Mapping[str, bytes] | None = None) -> Path:
    """Write a package folder (or ``.zip`` when ``target`` ends in .zip) atomically
    (:mod:`voxmetric.files`: an existing package is kept until the new one is complete); ``extra``:
    more files (name → bytes, e.g. the ONNX graph)."""
    extra = dict(extra or {})
    target = Path(target)
    _check_free(target, overwrite)
    text = _card_text(card)
    if target.suffix.lower() == ".zip":
        with atomic_open(target, "wb", overwrite=overwrite) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(CARD, text)
            zf.writestr(WEIGHTS, weights)
            for fname, data in extra.items():
                zf.writestr(fname, data)
        return target
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for fname, data in ((WEIGHTS, weights), *extra.items(), (CARD, text.encode("utf-8"))):
            with open(tmp / fname, "wb") as fh:
                fh.write(data)
    return target


def save_package(
    out_dir: str | Path,
    card: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    half: bool = False,
    overwrite: bool = False,
    onnx: bool | None = None,
) -> Path:
    """Write a model package to ``out_dir`` (a folder, or a ``.zip`` file) and return its path.

    ``card`` holds at least name, method, role, modality, config, data; ``format``,
    ``engine_version``, ``weights_sha256``, ``weights_bytes``, ``weights_dtype`` are filled in,
    ``created`` / ``intended_use`` / ``demo`` default to now / research-only / False. The card
    is validated before anything is written. ``half=True`` stores floating tensors as float16
    (half the size; :func:`load_package` returns them as float32). The package is assembled in
    a temporary folder and renamed into place; an existing ``out_dir`` is an error unless
    ``overwrite=True``. ``onnx``: also store the verified ONNX graph of the method's forward pass
    (:func:`export_onnx`; None = when the method can be exported and the ``onnx`` package is
    installed, True = required, False = never).
    """
    target = Path(out_dir)
    _check_free(target, overwrite)
    weights = _weights_bytes(state_dict, half)
    full = _complete_card(card, weights, half)
    validate_card(full, "the model card to save")
    extra: dict[str, bytes] = {}
    if onnx is not False:
        graph = export_onnx(full, weights, required=bool(onnx))
        if graph is not None:
            full["onnx"], extra[ONNX] = graph
            validate_card(full, "the model card to save")
    return _write_package(target, full, weights, overwrite, extra)


# ---- ONNX graphs ---------------------------------------------------------------------------
def _exportable(card: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """(method, cfg) of a card whose method's forward pass can be exported; None otherwise."""
    from .methods import get_method

    try:
        method = get_method(card["method"])
        if not (hasattr(method, "config_from_dict") and hasattr(method, "onnx_example")):
            return None  # not a registry method (e.g. a stand-in without the contract)
        cfg = method.config_from_dict(card.get("config", {}))
    except ConfigError:
        return None
    return (method, cfg) if method.onnx_example(cfg) is not None else None


def export_onnx(card: Mapping[str, Any], weights: bytes, required: bool = False
                ) -> tuple[dict[str, Any], bytes] | None:
    """(card ``onnx`` block, graph bytes) of the network that ``card`` and the safetensors
    ``weights`` describe: exported with the method's ``forward`` (:mod:`voxmetric.runtime`) from
    exactly the stored weights (float16 ones as float32, as :func:`load_package` gives them) and
    verified against torch on three input sizes. None when the method cannot be exported or the
    ``onnx`` package is missing (ModelError instead when ``required``)."""
    import importlib.util

    from . import runtime

    found = _exportable(card)
    why = None
    if found is None:
        why = f"method {card.get('method')!r} declares no ONNX export (its predictor needs torch)"
    elif importlib.util.find_spec("onnx") is None:
        why = "the 'onnx' package is not installed (pip install onnx)"
    elif not runtime.onnxruntime_available():
        why = "the 'onnxruntime' package is not installed (pip install onnxruntime)"
    if why is not None or found is None:
        if required:
            raise ModelError(f"cannot store an ONNX graph for model {card.get('name')!r}: {why}.")
        return None
    import torch

    method, cfg = found
    net = method.build(cfg, len(card_classes(card)) + 1)
    net.load_state_dict(_deserialise(weights, "the weights to export"), strict=True)
    shape, axes = method.onnx_example(cfg)
    graph = runtime.export_onnx(net, method.forward, shape, axes)
    # verify on the example and on inputs that differ from it along each dynamic axis in turn
    shapes = [list(shape)]
    for axis in axes:
        shapes.append([2 * s if i == axis else s for i, s in enumerate(shape)])
    diff = runtime.verify_onnx(graph, net, method.forward, shapes)
    block = {"file": ONNX, "sha256": runtime.sha256(graph), "bytes": len(graph), "opset": runtime.OPSET,
             "exporter": f"torch {torch.__version__}", "input_shape": list(shape), "dynamic_axes": list(axes),
             "verified_shapes": shapes, "max_rel_diff": float(f"{diff:.3g}")}
    return block, graph


def read_onnx(path: str | Path, card: Mapping[str, Any] | None = None) -> bytes | None:
    """The package's ONNX graph after its size + SHA-256 check against the card (None when the
    card records none); ModelError when it is missing, truncated or modified."""
    p = _normalise_path(path)
    card = read_card(p) if card is None else card
    block = card.get("onnx")
    if not block:
        return None
    where = f"{p}:{block['file']}"
    if _package_kind(p) == "dir":
        f = p / block["file"]
        if not f.is_file():
            raise ModelError(f"{p} has no {block['file']} although model.json records one. {_REINSTALL}")
        data = f.read_bytes()
    else:
        with zipfile.ZipFile(p) as zf:
            card_name, _ = _zip_members(zf, p)
            try:
                data = zf.read(card_name[: -len(CARD)] + block["file"])
            except KeyError:
                raise ModelError(f"{p} has no {block['file']} although model.json records one. {_REINSTALL}") from None
    if len(data) != int(block["bytes"]) or hashlib.sha256(data).hexdigest() != block["sha256"]:
        raise ModelError(f"{where} failed its size/SHA-256 check against model.json (recorded "
                         f"{block['sha256'][:16]}..., {block['bytes']} bytes): the graph was modified or corrupted "
                         f"and will not be loaded. {_REINSTALL}")
    return data


def add_onnx(path: str | Path) -> Path:
    """Store the verified ONNX graph in an existing package folder or zip (made before graphs
    were stored, or by another engine): the weights are checked, the graph exported from them
    and verified, and the package rewritten atomically. ModelError when the method cannot be
    exported or ``onnx`` is missing."""
    p = _normalise_path(path)
    card, weights = read_verified(p)
    block, graph = export_onnx(card, weights, required=True)  # type: ignore[misc]
    full = dict(card, onnx=block)
    validate_card(full, "the model card with its ONNX graph")
    return _write_package(p, full, weights, overwrite=True, extra={ONNX: graph})


# ---- load ----------------------------------------------------------------------------------
_REINSTALL = "Copy or install the package again from its original source; never edit its files by hand."


def _parse_card(text: bytes | str, where: str) -> dict[str, Any]:
    try:
        card = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{where} is not valid JSON ({e}). {_REINSTALL}") from e
    if not isinstance(card, dict):
        raise ModelError(f"{where} must hold a JSON object, not {type(card).__name__}. {_REINSTALL}")
    validate_card(card, where)
    return card


def _zip_members(zf: zipfile.ZipFile, path: Path) -> tuple[str, str]:
    cards = [n for n in zf.namelist() if n == CARD or n.endswith("/" + CARD)]
    if not cards:
        raise ModelError(f"{path} holds no {CARD}: a model package zip must contain {CARD} and {WEIGHTS}")
    card = min(cards, key=lambda n: n.count("/"))
    return card, card[: -len(CARD)] + WEIGHTS


def _package_kind(path: Path) -> str:
    if path.is_dir():
        return "dir"
    if path.is_file() and zipfile.is_zipfile(path):
        return "zip"
    if path.suffix.lower() == ".zip" and path.is_file():
        raise ModelError(f"{path} is not a readable zip file (truncated or damaged). {_REINSTALL}")
    if not path.exists():
        raise ModelError(f"model package {path} does not exist; give the folder (or .zip) that holds {CARD} and {WEIGHTS}")
    raise ModelError(f"{path} is not a model package: give a folder (or .zip) that holds {CARD} and {WEIGHTS}")


def _normalise_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p.parent if p.name == CARD and p.is_file() else p


def read_card(path: str | Path) -> dict[str, Any]:
    """The validated card of a package folder or zip, without reading the weights."""
    p = _normalise_path(path)
    if _package_kind(p) == "dir":
        if not (p / CARD).is_file():
            raise ModelError(f"{p} has no {CARD}: a model package is a folder with {CARD} and {WEIGHTS}")
        return _parse_card((p / CARD).read_bytes(), str(p / CARD))
    try:
        with zipfile.ZipFile(p) as zf:
            card_name, _ = _zip_members(zf, p)
            return _parse_card(zf.read(card_name), f"{p}:{card_name}")
    except zipfile.BadZipFile as e:
        raise ModelError(f"{p} is a damaged zip file ({e}). {_REINSTALL}") from e


def _check_weights(card: Mapping[str, Any], data: bytes | None, size: int, where: str) -> None:
    expected = int(card["weights_bytes"])
    if size != expected:
        state = "truncated" if size < expected else "longer than recorded"
        raise ModelError(
            f"{where} is {state}: {size} bytes, but model.json records {expected} bytes and "
            f"SHA-256 {card['weights_sha256'][:16]}... The weights are incomplete or were replaced. {_REINSTALL}"
        )
    if data is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != card["weights_sha256"]:
            raise ModelError(
                f"{where} failed its SHA-256 check (model.json records {card['weights_sha256'][:16]}..., "
                f"the file hashes to {got[:16]}...): the weights were modified or corrupted and will not be "
                f"loaded. {_REINSTALL}"
            )


def read_verified(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """``(card, weights bytes)`` of a package after the schema, size and SHA-256 checks.

    Nothing is deserialised; raises :class:`ModelError` on a missing, truncated or tampered file.
    """
    p = _normalise_path(path)
    card = read_card(p)
    if _package_kind(p) == "dir":
        wpath = p / WEIGHTS
        if not wpath.is_file():
            raise ModelError(f"{p} has no {WEIGHTS}: the package is incomplete. {_REINSTALL}")
        where = str(wpath)
        _check_weights(card, None, wpath.stat().st_size, where)
        data = wpath.read_bytes()
    else:
        with zipfile.ZipFile(p) as zf:
            card_name, wname = _zip_members(zf, p)
            where = f"{p}:{wname}"
            try:
                info = zf.getinfo(wname)
            except KeyError:
                raise ModelError(f"{p} has no {wname}: the package is incomplete. {_REINSTALL}") from None
            _check_weights(card, None, info.file_size, where)
            try:
                data = zf.read(wname)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ModelError(f"{where} cannot be read from the zip ({e}). {_REINSTALL}") from e
    _check_weights(card, data, len(data), where)
    return card, data


def _not_safetensors(where: str, e: Exception) -> ModelError:
    return ModelError(f"{where} is not a valid safetensors file ({e}). VoxMetric loads only safetensors weights, "
                      "never pickles; export the weights with voxmetric.models.save_package.")


def _deserialise(data: bytes, where: str) -> dict[str, torch.Tensor]:
    import torch
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as e:  # SafetensorError, and whatever a hostile header provokes
        raise _not_safetensors(where, e) from e
    return {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in tensors.items()}


def _check_safetensors(data: bytes, where: str) -> None:
    """ModelError unless ``data`` parses as safetensors (numpy, no torch): a package that runs on
    its ONNX graph is refused for weights that are not safetensors, as :func:`load_package` would."""
    from safetensors.numpy import load

    try:
        load(data)
    except Exception as e:  # SafetensorError, and whatever a hostile header provokes
        raise _not_safetensors(where, e) from e


def load_package(path: str | Path) -> ModelPackage:
    """Load a package folder or zip: card schema check, then size + SHA-256 check of the
    weights, then safetensors parsing (float16/bfloat16 tensors come back as float32)."""
    p = _normalise_path(path)
    card, data = read_verified(p)
    return ModelPackage(card=card, state_dict=_deserialise(data, f"{p} ({WEIGHTS})"), path=p)


# ---- modality ------------------------------------------------------------------------------
def check_modality(card: Mapping[str, Any] | ModelPackage, modality: str, strict: bool = True) -> None:
    """Refuse a CT model on an MR image (and vice versa); ``any`` models accept both.

    ``modality`` is the image's: ``"ct"`` or ``"mr"``. ``strict=False`` turns the refusal into
    a ``UserWarning`` (the user explicitly allowed the mismatch).
    """
    if isinstance(card, ModelPackage):
        card = card.card
    if modality not in ("ct", "mr"):
        raise ConfigError(f"image modality must be 'ct' or 'mr', not {modality!r}")
    model_modality = card.get("modality", "any")
    if model_modality in ("any", modality):
        return
    message = (
        f"model {card.get('name', '?')!r} was trained on {model_modality.upper()} images but the image is "
        f"{modality.upper()}"
    )
    if strict:
        raise ModelError(
            f"{message}. Pick a {modality.upper()} model (voxmetric models list), or allow the mismatch "
            "explicitly if you know what you are doing."
        )
    warnings.warn(f"{message}; results may be meaningless.", UserWarning, stacklevel=2)


# ---- build ---------------------------------------------------------------------------------
def _config_from_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls(**values)`` with JSON lists turned back into tuples where the dataclass uses tuples."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config fields {unknown}")
    out = dict(values)
    for key, value in values.items():
        f = known[key]
        default = f.default if f.default is not MISSING else None
        if isinstance(value, list) and (isinstance(default, tuple) or str(f.type).startswith(("tuple", "Tuple"))):
            out[key] = tuple(value)
    return cls(**out)


def build_model(pkg: ModelPackage) -> tuple[Any, Any, torch.nn.Module]:
    """``(method, cfg, model)``: the card's method from ``voxmetric.methods``, its config
    dataclass filled from ``card["config"]``, and the network for the card's classes with the
    weights loaded, in eval mode on the CPU."""
    from .methods import available_methods, get_method

    card = pkg.card
    try:
        method = get_method(card["method"])
    except ConfigError as e:
        raise ModelError(
            f"model {card['name']!r} needs method {card['method']!r}, which this engine does not have "
            f"(available: {', '.join(available_methods())}). Update voxmetric."
        ) from e
    values = dict(card.get("config", {}))
    try:
        if hasattr(method, "config_from_dict"):  # registry methods: typed coercion, unknown-field check
            cfg = method.config_from_dict(values)
        else:
            cfg = _config_from_dict(method.config_cls, values)
    except (ConfigError, TypeError, ValueError) as e:
        raise ModelError(
            f"the config of model {card['name']!r} does not fit method {card['method']!r} ({e}); the package "
            "was made by another engine version. Update voxmetric or re-export the model."
        ) from e
    try:
        model = method.build(cfg, len(pkg.classes) + 1)
        model.load_state_dict(pkg.state_dict, strict=True)
    except (TypeError, ValueError, RuntimeError, ConfigError) as e:
        raise ModelError(
            f"the weights of model {card['name']!r} do not fit method {card['method']!r} with its config ({e}). "
            "The package is inconsistent; re-export it."
        ) from e
    return method, cfg, model.eval()


@dataclass
class InitialWeights:
    """What fine-tuning starts from: the package's method config (the defaults of the new run),
    its state dict, a description of the source for the new card and the package's own card."""

    config: Any
    state_dict: dict[str, torch.Tensor]
    source: dict[str, Any]
    card: dict[str, Any]


def init_config(card: Mapping[str, Any], method: Any) -> Any:
    """The settings that fine-tuning the package of ``card`` with ``method`` starts from: the
    card's config read as one of ``method``'s (ModelError naming the method to use when they do
    not fit). Reads the card only, imports no torch: the first half of :func:`initial_weights`'s
    check, which VoxMetric Train uses to list the packages a method can start from."""
    try:
        return method.config_from_dict(card.get("config", {}))
    except ConfigError as e:
        raise ModelError(f"model {card['name']!r} was trained with {card['method']}, whose settings do not fit "
                         f"{method.name} ({e}); fine-tune it with --method {card['method']}.") from e


def initial_weights(name: str | Path, method: Any) -> InitialWeights:
    """The verified weights of model ``name`` (registry name or package path) to fine-tune with
    ``method``: its config must be one of ``method``'s (same settings, :func:`init_config`;
    ModelError naming the method to use otherwise) and its network must be ``method``'s for it."""
    pkg = load_package(find_model(name).path)
    cfg = init_config(pkg.card, method)
    net = method.build(cfg, len(pkg.classes) + 1)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in pkg.state_dict.items()}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise ModelError(f"model {pkg.name!r} has another network than {method.name} builds with its settings "
                         f"(first differences: {', '.join(diff[:3])}); fine-tune it with --method {pkg.method}.")
    source = {"name": pkg.name, "method": pkg.method, "weights_sha256": pkg.card["weights_sha256"],
              "classes": list(pkg.classes)}
    return InitialWeights(cfg, pkg.state_dict, source, dict(pkg.card))


# ---- registry ------------------------------------------------------------------------------
def models_home() -> Path:
    """``$VOXMETRIC_HOME`` or ``~/.voxmetric``; installed models live in its ``models`` folder."""
    env = os.environ.get("VOXMETRIC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".voxmetric"


def models_dir() -> Path:
    """Folder of installed (user) packages: ``models_home() / "models"``."""
    return models_home() / "models"


BUNDLED_HINT = ("Install VoxMetric from its source folder or a wheel built from it (they include the bundled models), "
                "point VOXMETRIC_BUNDLED_MODELS at a folder holding them, or make them with "
                "`python Resources/Models/train_bundled_models.py` in a source checkout.")


def bundled_models_dir() -> Path:
    """Folder of bundled packages: ``$VOXMETRIC_BUNDLED_MODELS``, else ``<repo>/Resources/Models``
    of a source checkout (or an editable install), else the copy a wheel installs beside the
    engine (``voxmetric/bundled_models``, see ``setup.py``)."""
    env = os.environ.get("VOXMETRIC_BUNDLED_MODELS")
    if env:
        return Path(env).expanduser()
    import voxmetric

    here = Path(voxmetric.__file__).resolve().parent
    repo = here.parent / "Resources" / "Models"
    return repo if repo.is_dir() else here / "bundled_models"


def _scan(folder: Path, bundled: bool) -> list[ModelInfo]:
    if not folder.is_dir():
        return []
    out = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not ((child / CARD).is_file() or child.suffix.lower() == ".zip"):
            continue
        try:
            card = read_card(child)
        except ModelError as e:
            warnings.warn(f"skipping model package {child}: {e}", UserWarning, stacklevel=3)
            continue
        out.append(ModelInfo(card["name"], card["role"], card["modality"], card["method"], child, bundled, card["demo"],
                             str(card.get("description", ""))))
    return out


def list_models() -> list[ModelInfo]:
    """Bundled packages, then installed ones (cards only; weights are checked when loaded)."""
    return _scan(bundled_models_dir(), True) + _scan(models_dir(), False)


def _names_hint(models: list[ModelInfo]) -> str:
    if not models:
        return f"no models are installed (folder {models_dir()}); install one with `voxmetric models install PATH`"
    return "available: " + ", ".join(m.name for m in models)


def find_model(name: str | Path) -> ModelInfo:
    """The registry entry called ``name``; failing that, ``name`` as a package path."""
    models = list_models()
    for m in models:
        if m.name == str(name):
            return m
    p = _normalise_path(name)
    if p.exists() and ((p / CARD).is_file() or p.suffix.lower() == ".zip"):
        card = read_card(p)
        return ModelInfo(card["name"], card["role"], card["modality"], card["method"], p, False, card["demo"],
                         str(card.get("description", "")))
    raise ModelError(f"no model called {str(name)!r}; {_names_hint(models)}")


def install(path: str | Path, name: str | None = None) -> ModelInfo:
    """Verify the package at ``path`` (schema, SHA-256, safetensors) and copy it atomically into
    :func:`models_dir` as ``<name>`` (default: the card's name). Refuses an existing name."""
    src = _normalise_path(path)
    card, data = read_verified(src)
    _deserialise(data, f"{src} ({WEIGHTS})")  # a valid safetensors file, not only a matching hash
    if name is not None:
        card = dict(card, name=name)
        validate_card(card, f"the card renamed to {name!r}")
    taken = [m for m in list_models() if m.name == card["name"]]
    if taken:
        where = "bundled" if taken[0].bundled else f"installed at {taken[0].path}"
        raise ModelError(
            f"a model called {card['name']!r} is already {where}; remove it first "
            f"(`voxmetric models remove {card['name']}`) or install under another name (--name)"
        )
    target = models_dir() / card["name"]
    graph = read_onnx(src, card)
    _write_package(target, card, data, overwrite=False, extra={} if graph is None else {ONNX: graph})
    return ModelInfo(card["name"], card["role"], card["modality"], card["method"], target, False, card["demo"],
                     str(card.get("description", "")))


def remove(name: str) -> Path:
    """Delete the installed package ``name`` and return its former path; bundled ones are refused."""
    models = list_models()
    match = [m for m in models if m.name == name]
    if not match:
        raise ModelError(f"no model called {name!r}; {_names_hint(models)}")
    if any(m.bundled for m in match):
        raise ModelError(
            f"{name!r} is a bundled model ({match[0].path}) and cannot be removed; it ships with VoxMetric"
        )
    path = match[0].path
    discard(path)  # atomic disappearance from the registry, then delete
    return path


# ---- pipelines -----------------------------------------------------------------------------
def list_pipelines() -> list[PipelineInfo]:
    """Named pipelines from ``*.pipeline.json`` / ``pipeline.json`` files in both models folders."""
    out = []
    for folder in (bundled_models_dir(), models_dir()):
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if not f.is_file() or not (f.name == "pipeline.json" or f.name.endswith(PIPELINE_SUFFIX)):
                continue
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
                info = PipelineInfo(str(d["name"]), str(d["localizer"]), str(d["refiner"]), f)
            except (ValueError, KeyError, TypeError) as e:
                warnings.warn(
                    f"skipping pipeline file {f}: needs JSON {{'name', 'localizer', 'refiner'}} ({e})",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            out.append(info)
    return out


def write_pipeline(name: str, localizer: str, refiner: str, overwrite: bool = False) -> Path:
    """Save pipeline ``name`` = (localizer model, refiner model) in :func:`models_dir`."""
    loc, ref = find_model(localizer), find_model(refiner)
    for m, role in ((loc, "localizer"), (ref, "refiner")):
        if m.role not in (role, "joint"):
            raise ModelError(f"model {m.name!r} is a {m.role}, not a {role}; pick a {role} model")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"pipeline name {name!r} must be a plain non-empty file name")
    target = models_dir() / f"{name}{PIPELINE_SUFFIX}"
    _check_free(target, overwrite)
    return write_json(target, {"name": name, "localizer": loc.name, "refiner": ref.name}, overwrite=overwrite)


def _default_model(models: list[ModelInfo], role: str, modality: str, strict: bool) -> ModelInfo:
    eligible = [m for m in models if m.role in (role, "joint")]
    for wanted in (modality, "any"):
        for m in eligible:
            if m.modality == wanted:
                return m
    if not strict and eligible:
        check_modality({"name": eligible[0].name, "modality": eligible[0].modality}, modality, strict=False)
        return eligible[0]
    raise ModelError(
        f"no {role} model for {modality.upper()} images is installed; install a package "
        f"(`voxmetric models install PATH`) or train one (`voxmetric train ...`). {_names_hint(models)}"
    )


def resolve_pipeline(name: str | None, modality: str, strict: bool = True) -> tuple[Path, Path]:
    """``(localizer package path, refiner package path)`` for pipeline ``name`` or, when ``name``
    is None, the default pipeline for ``modality`` ("ct" / "mr"); modality policy as in
    :func:`check_modality` (``strict=False`` warns instead of refusing)."""
    if modality not in ("ct", "mr"):
        raise ConfigError(f"image modality must be 'ct' or 'mr', not {modality!r}")
    if name is None:
        models = list_models()
        loc = _default_model(models, "localizer", modality, strict)
        ref = _default_model(models, "refiner", modality, strict)
        return loc.path, ref.path
    pipelines = list_pipelines()
    match = [p for p in pipelines if p.name == name]
    if not match:
        have = ", ".join(p.name for p in pipelines) or "none"
        raise ModelError(
            f"no pipeline called {name!r} (pipelines: {have}); create a {name}{PIPELINE_SUFFIX} file "
            f"in {models_dir()} or leave the pipeline empty to use the default"
        )
    loc, ref = find_model(match[0].localizer), find_model(match[0].refiner)
    for m in (loc, ref):
        check_modality({"name": m.name, "modality": m.modality}, modality, strict=strict)
    return loc.path, ref.path


# ---- inference pipelines -----------------------------------------------------------------------
def load_pipeline(name: str | None, modality: str, device: Any = "cpu", config: Any = None,
                  strict: bool = True, stages: Sequence[str] = ("localizer", "refiner"),
                  runtime: str = "auto") -> Any:
    """A ready :class:`voxmetric.pipeline.Pipeline` for ``modality`` ("ct" / "mr").

    ``name``: a pipeline name (:func:`list_pipelines`), or a refiner / joint model name or
    package path (paired with the default localizer), or None for the default pipeline
    (:func:`resolve_pipeline`). ``config``: a ``PipelineConfig`` (None = defaults). ``stages``:
    the roles to load — refining in a given box needs no localizer, localizing no refiner. The
    packages are verified (schema + SHA-256) and built in eval mode on ``device``. ``runtime``:
    "auto" runs a package's verified ONNX graph with ONNX Runtime on the CPU when it has one
    (torch is then not imported), "onnx" requires that, "torch" always builds the torch network.
    ``device`` may be a name ("cpu") so that nothing needs torch.
    """
    from .pipeline import Pipeline, Stage

    if runtime not in RUNTIMES:
        raise ConfigError(f"Unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}.")
    cpu = getattr(device, "type", str(device)) == "cpu"
    if runtime == "onnx" and not cpu:
        raise ConfigError(f"The ONNX runtime runs on the CPU only; use --runtime torch (or auto) on {device}.")

    models = list_models()
    paths: dict[str, Path] = {}
    if name is not None and not any(p.name == name for p in list_pipelines()):
        ref = find_model(name)
        if ref.role not in ("refiner", "joint"):
            raise ModelError(f"model {ref.name!r} is a {ref.role}; give a refiner model or a pipeline name")
        check_modality({"name": ref.name, "modality": ref.modality}, modality, strict=strict)
        paths["refiner"] = ref.path
        if ref.role == "joint":
            paths["localizer"] = ref.path
    elif name is not None:
        loc, ref_path = resolve_pipeline(name, modality, strict=strict)
        paths = {"localizer": loc, "refiner": ref_path}
    loaded: dict[str, Stage] = {}
    for role in sorted(stages, key=lambda r: r != "refiner"):  # the refiner first: it may need no localizer
        if role == "localizer" and "refiner" in loaded and \
                loaded["refiner"].method.data_recipe(loaded["refiner"].cfg).region == "body":
            continue  # a whole-body refiner: the pipeline uses the body as its ROI
        if role not in paths:
            paths[role] = _default_model(models, role, modality, strict).path
        stage = _onnx_stage(paths[role], runtime) if cpu and runtime != "torch" else None
        loaded[role] = stage or load_stage(paths[role])
    return Pipeline(loaded.get("localizer"), loaded.get("refiner"), modality, config, device)


def load_stage(path: str | Path) -> Any:
    """The :class:`voxmetric.pipeline.Stage` of the verified package at ``path``: its torch
    network in eval mode on the CPU (the pipeline moves it to its device)."""
    from .pipeline import Stage

    pkg = load_package(path)
    method, cfg, model = build_model(pkg)
    return Stage(method, cfg, model, pkg.name, pkg.classes)


def _onnx_stage(path: Path, runtime: str) -> Any:
    """A pipeline Stage running the package's verified ONNX graph (no torch), or None when the
    package has no graph, its method cannot use one or onnxruntime is missing (ModelError
    instead when ``runtime`` is "onnx")."""
    from . import runtime as rt
    from .pipeline import Stage

    card, weights = read_verified(path)  # the weights' hash too: the graph was exported from them
    found = _exportable(card)
    graph = read_onnx(path, card) if found is not None else None
    if graph is None or found is None or not rt.onnxruntime_available():
        if runtime == "onnx":
            why = ("it stores no ONNX graph (add one: voxmetric models export-onnx NAME)" if found and graph is None
                   else "its method needs torch" if not found else "onnxruntime is not installed (pip install onnxruntime)")
            raise ModelError(f"model {card['name']!r} cannot run on ONNX Runtime: {why}.")
        return None
    _check_safetensors(weights, f"{path} ({WEIGHTS})")
    method, cfg = found
    return Stage(method, cfg, None, card["name"], card_classes(card), network=rt.OnnxNetwork(graph))
