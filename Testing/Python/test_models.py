"""Model packages: save/load round trip, SHA-256 and safetensors-only loading, registry, pipelines, CLI."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from voxmetric import __version__
from voxmetric import models as M
from voxmetric.cli import main
from voxmetric.errors import ConfigError, ModelError


class Tiny(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


def tiny_state(seed: int = 0, width: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Tiny(width)
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.num_batches_tracked.fill_(7)
    return model.state_dict()


def card(name: str = "tiny-ct-refiner", role: str = "refiner", modality: str = "ct", **kw) -> dict:
    c = {
        "name": name,
        "method": "Tiny",
        "role": role,
        "modality": modality,
        "config": {"width": 4, "strategies": ["H", "C"]},
        "data": {"spacing_mm": 1.0, "slab": 3, "patch": 64, "normalisation": "ct_window", "region": "label_box"},
        "training": {"cases": 4, "iterations": 10},
        "validation": {"dsc": 0.5},
        "description": "test model",
        "intended_use": "research demo: trained on synthetic phantoms, not for clinical use",
        "demo": True,
    }
    c.update(kw)
    return c


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """Empty installed and bundled model folders under tmp_path."""
    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(tmp_path / "bundled"))
    (tmp_path / "bundled").mkdir()
    return tmp_path


# ---- save / load ---------------------------------------------------------------------------
def test_round_trip_exact(tmp_path):
    state = tiny_state()
    out = M.save_package(tmp_path / "pkg", card(), state)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]
    pkg = M.load_package(out)
    assert pkg.path == out and pkg.name == "tiny-ct-refiner" and pkg.role == "refiner"
    assert pkg.state_dict.keys() == state.keys()
    for k, v in state.items():
        assert pkg.state_dict[k].dtype == v.dtype and torch.equal(pkg.state_dict[k], v), k
    c = pkg.card
    assert c["format"] == "voxmetric-model/2" and c["engine_version"] == __version__
    assert pkg.classes == ("Prostate",)  # a card without "classes" holds the prostate alone
    data = (out / "weights.safetensors").read_bytes()
    assert c["weights_sha256"] == hashlib.sha256(data).hexdigest() and c["weights_bytes"] == len(data)
    assert c["config"] == {"width": 4, "strategies": ["H", "C"]} and c["demo"] is True
    assert c["weights_dtype"] == "float32" and c["created"][:2] == "20"
    assert not list(tmp_path.glob(".*")), "temporary folders left behind"


def test_classes_and_format_1_cards(tmp_path):
    classes = [{"name": "Bladder", "value": 2, "color": [0.8, 0.7, 0.4]},
               {"name": "Prostate", "value": 1, "terminology": "x~SCT^41216001^Prostate~y"}]
    pkg = M.load_package(M.save_package(tmp_path / "multi", card(classes=classes), tiny_state()))
    assert pkg.classes == ("Prostate", "Bladder")  # ordered by label value
    with pytest.raises(ModelError, match="classes"):
        M.save_package(tmp_path / "bad", card(classes=[{"name": "Prostate", "value": 0}]), tiny_state())
    # a package written by an engine before multi-class models (format 1) still loads as "Prostate"
    old = M.save_package(tmp_path / "old", card(), tiny_state())
    text = json.loads((old / "model.json").read_text(encoding="utf-8"))
    text["format"] = "voxmetric-model/1"
    (old / "model.json").write_text(json.dumps(text), encoding="utf-8")
    assert M.load_package(old).classes == ("Prostate",) and M.read_card(old)["format"] == "voxmetric-model/1"


def test_fp16_storage_upcasts_within_tolerance(tmp_path):
    state = tiny_state()
    full = M.save_package(tmp_path / "full", card(), state)
    half = M.save_package(tmp_path / "half", card(), state, half=True)
    assert M.read_card(half)["weights_dtype"] == "float16"
    assert (half / "weights.safetensors").stat().st_size < (full / "weights.safetensors").stat().st_size
    sd = M.load_package(half).state_dict
    for k, v in state.items():
        got = sd[k]
        if v.is_floating_point():
            assert got.dtype == torch.float32
            assert torch.allclose(got, v, rtol=1e-3, atol=1e-4), k
        else:
            assert got.dtype == v.dtype and torch.equal(got, v)
    assert not torch.equal(sd["conv.weight"], state["conv.weight"])  # really stored in half precision


def test_zip_package_round_trip(tmp_path):
    state = tiny_state()
    z = M.save_package(tmp_path / "pkg.zip", card(), state)
    assert zipfile.is_zipfile(z)
    pkg = M.load_package(z)
    assert torch.equal(pkg.state_dict["head.weight"], state["head.weight"])
    # a zip made by hand with the package inside a folder also loads
    folder = M.save_package(tmp_path / "f", card(), state)
    z2 = tmp_path / "byhand.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"mypkg/{f.name}")
    assert M.load_package(z2).card["name"] == "tiny-ct-refiner"


def test_card_input_is_not_mutated_and_tuples_become_lists(tmp_path):
    c = card(data={"spacing_mm": (1.0, 1.0, 2.5), "patch": 64})
    before = json.dumps(c, default=list)
    out = M.save_package(tmp_path / "p", c, tiny_state())
    assert json.dumps(c, default=list) == before and "weights_sha256" not in c
    assert M.read_card(out)["data"]["spacing_mm"] == [1.0, 1.0, 2.5]


def test_refuses_to_overwrite(tmp_path):
    out = M.save_package(tmp_path / "pkg", card(), tiny_state(0))
    with pytest.raises(ModelError, match="already exists"):
        M.save_package(out, card(), tiny_state(1))
    assert torch.equal(M.load_package(out).state_dict["conv.weight"], tiny_state(0)["conv.weight"])
    M.save_package(out, card(), tiny_state(1), overwrite=True)
    assert torch.equal(M.load_package(out).state_dict["conv.weight"], tiny_state(1)["conv.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_tampered_weights_refused(tmp_path):
    out = M.save_package(tmp_path / "pkg", card(), tiny_state())
    w = out / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01  # one bit in a tensor value
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256") as e:
        M.load_package(out)
    assert "install the package again" in str(e.value)


def test_truncated_and_missing_files_refused(tmp_path):
    out = M.save_package(tmp_path / "pkg", card(), tiny_state())
    w = out / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:-100])
    with pytest.raises(ModelError, match="truncated"):
        M.load_package(out)
    w.unlink()
    with pytest.raises(ModelError, match="no weights.safetensors"):
        M.load_package(out)
    w.write_bytes(data)
    M.load_package(out)
    (out / "model.json").unlink()
    with pytest.raises(ModelError, match="no model.json"):
        M.load_package(out)
    with pytest.raises(ModelError, match="does not exist"):
        M.load_package(tmp_path / "nowhere")


def test_truncated_zip_refused(tmp_path):
    z = M.save_package(tmp_path / "pkg.zip", card(), tiny_state())
    data = z.read_bytes()
    z.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or damaged"):
        M.load_package(z)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"role": "segmenter"}, "role"),
        ({"modality": "pet"}, "modality"),
        ({"name": "../escape"}, "name"),
        ({"config": [1, 2]}, "config"),
        ({"data": {"spacing_mm": -1.0}}, "data.spacing_mm"),
        ({"demo": "yes"}, "demo"),
        ({"modalty": "ct"}, "modalty"),
    ],
)
def test_schema_violations_refused_on_save(tmp_path, change, where):
    with pytest.raises(ModelError, match="not a valid VoxMetric model card") as e:
        M.save_package(tmp_path / "pkg", card(**change), tiny_state())
    assert where.split(".")[0] in str(e.value)
    assert not (tmp_path / "pkg").exists()


def test_schema_violations_refused_on_load(tmp_path):
    out = M.save_package(tmp_path / "pkg", card(), tiny_state())
    c = json.loads((out / "model.json").read_text(encoding="utf-8"))
    del c["method"]
    c["weights_sha256"] = "xyz"
    (out / "model.json").write_text(json.dumps(c))
    with pytest.raises(ModelError) as e:
        M.load_package(out)
    msg = str(e.value)
    assert "'method' is a required property" in msg and "weights_sha256" in msg
    (out / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        M.load_package(out)


class _Evil:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("via_torch_save", [False, True])
def test_pickle_renamed_to_safetensors_is_not_executed(tmp_path, via_torch_save):
    marker = tmp_path / "pwned"
    out = M.save_package(tmp_path / "pkg", card(), tiny_state())
    w = out / "weights.safetensors"
    if via_torch_save:
        torch.save({"conv.weight": torch.zeros(1), "evil": _Evil(marker)}, w)
    else:
        w.write_bytes(pickle.dumps({"conv.weight": _Evil(marker)}))
    # an attacker who also rewrites the card's hash still gets nowhere
    c = json.loads((out / "model.json").read_text(encoding="utf-8"))
    c["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    c["weights_bytes"] = w.stat().st_size
    (out / "model.json").write_text(json.dumps(c))
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        M.load_package(out)
    assert not marker.exists()


def test_non_tensor_state_and_empty_state_refused(tmp_path):
    with pytest.raises(ModelError, match="not a tensor"):
        M.save_package(tmp_path / "a", card(), {"w": torch.zeros(2), "lr": 0.1})
    with pytest.raises(ModelError, match="empty"):
        M.save_package(tmp_path / "b", card(), {})


def test_shared_and_noncontiguous_tensors_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "b": base, "t": base.t()}  # shared storage, non-contiguous view
    pkg = M.load_package(M.save_package(tmp_path / "p", card(), state))
    assert torch.equal(pkg.state_dict["a"], base) and torch.equal(pkg.state_dict["t"], base.t())


# ---- modality policy -----------------------------------------------------------------------
def test_modality_policy():
    M.check_modality(card(modality="ct"), "ct")
    M.check_modality(card(modality="any"), "mr")
    M.check_modality(card(modality="any"), "ct")
    with pytest.raises(ModelError, match="trained on CT images but the image is MR"):
        M.check_modality(card(modality="ct"), "mr")
    with pytest.raises(ModelError, match="trained on MR"):
        M.check_modality(card(modality="mr"), "ct")
    with pytest.warns(UserWarning, match="trained on CT"):
        M.check_modality(card(modality="ct"), "mr", strict=False)
    with pytest.raises(ConfigError):
        M.check_modality(card(), "pet")


# ---- registry ------------------------------------------------------------------------------
def test_models_home_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("VOXMETRIC_HOME", raising=False)
    assert M.models_home() == Path.home() / ".voxmetric"
    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path))
    assert M.models_dir() == tmp_path / "models"
    monkeypatch.delenv("VOXMETRIC_BUNDLED_MODELS", raising=False)
    assert M.bundled_models_dir() == Path(M.__file__).resolve().parents[1] / "Resources" / "Models"


def test_install_list_find_remove(home):
    src = M.save_package(home / "src", card(), tiny_state())
    assert M.list_models() == []
    info = M.install(src)
    assert info.path == M.models_dir() / "tiny-ct-refiner" and not info.bundled
    assert M.load_package(info.path).card == M.read_card(src)
    assert [m.name for m in M.list_models()] == ["tiny-ct-refiner"]
    assert M.find_model("tiny-ct-refiner") == info
    with pytest.raises(ModelError, match="already installed"):
        M.install(src)
    renamed = M.install(src, name="copy2")
    assert M.read_card(renamed.path)["name"] == "copy2"
    M.load_package(renamed.path)  # SHA still valid after the rename
    with pytest.raises(ModelError, match="available: tiny-ct-refiner, copy2|available: copy2, tiny-ct-refiner"):
        M.find_model("nope")
    assert M.remove("copy2") == renamed.path and not renamed.path.exists()
    assert [m.name for m in M.list_models()] == ["tiny-ct-refiner"]
    with pytest.raises(ModelError, match="no model called"):
        M.remove("copy2")
    assert not [p for p in M.models_dir().iterdir() if p.name.startswith(".")]


def test_install_verifies_before_copying(home):
    src = M.save_package(home / "src", card(), tiny_state())
    w = src / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        M.install(src)
    assert M.list_models() == []
    with pytest.raises(ModelError, match="name"):
        M.install(M.save_package(home / "ok", card(), tiny_state()), name="bad/name")


def test_install_zip_and_bundled_cannot_be_removed(home):
    M.save_package(home / "bundled" / "ct-loc", card("ct-loc", role="localizer"), tiny_state())
    z = M.save_package(home / "p.zip", card("zipped", modality="mr"), tiny_state())
    info = M.install(z)
    assert info.path.is_dir() and (info.path / "weights.safetensors").is_file()
    models = M.list_models()
    assert [(m.name, m.bundled) for m in models] == [("ct-loc", True), ("zipped", False)]
    with pytest.raises(ModelError, match="bundled"):
        M.remove("ct-loc")
    with pytest.raises(ModelError, match="already bundled"):
        M.install(M.save_package(home / "x", card("ct-loc"), tiny_state()))


def test_broken_package_in_registry_is_skipped_with_warning(home):
    M.save_package(home / "bundled" / "good", card("good"), tiny_state())
    bad = home / "bundled" / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("{}")
    with pytest.warns(UserWarning, match="skipping model package"):
        assert [m.name for m in M.list_models()] == ["good"]


# ---- pipelines -----------------------------------------------------------------------------
def test_default_and_named_pipelines(home):
    b = home / "bundled"
    loc_ct = M.save_package(b / "a-loc-ct", card("a-loc-ct", role="localizer", modality="ct"), tiny_state())
    ref_any = M.save_package(b / "b-ref-any", card("b-ref-any", role="refiner", modality="any"), tiny_state())
    ref_ct = M.save_package(b / "c-ref-ct", card("c-ref-ct", role="refiner", modality="ct"), tiny_state())
    assert M.resolve_pipeline(None, "ct") == (loc_ct, ref_ct)  # exact modality before "any"
    with pytest.raises(ModelError, match="no localizer model for MR"):
        M.resolve_pipeline(None, "mr")
    with pytest.warns(UserWarning):
        assert M.resolve_pipeline(None, "mr", strict=False) == (loc_ct, ref_any)

    path = M.write_pipeline("fast", "a-loc-ct", "b-ref-any")
    assert json.loads(path.read_text(encoding="utf-8")) == {"name": "fast", "localizer": "a-loc-ct", "refiner": "b-ref-any"}
    assert [p.name for p in M.list_pipelines()] == ["fast"]
    assert M.resolve_pipeline("fast", "ct") == (loc_ct, ref_any)
    with pytest.raises(ModelError, match="trained on CT"):
        M.resolve_pipeline("fast", "mr")
    with pytest.raises(ModelError, match="no pipeline called 'slow'.*fast"):
        M.resolve_pipeline("slow", "ct")
    with pytest.raises(ModelError, match="already exists"):
        M.write_pipeline("fast", "a-loc-ct", "c-ref-ct")
    with pytest.raises(ModelError, match="is a refiner, not a localizer"):
        M.write_pipeline("wrong", "c-ref-ct", "c-ref-ct")


# ---- build_model ---------------------------------------------------------------------------
@dataclass
class TinyConfig:
    width: int = 4
    strategies: tuple[str, ...] = ("H",)


class _TinyMethod:
    name = "Tiny"
    role = "refiner"
    config_cls = TinyConfig

    @staticmethod
    def build(cfg: TinyConfig, num_classes: int = 2) -> nn.Module:
        assert num_classes == 2
        return Tiny(cfg.width)


def test_build_model_with_stand_in_method(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("voxmetric.methods")
    fake.get_method = lambda name: _TinyMethod if name == "Tiny" else (_ for _ in ()).throw(ConfigError(name))
    fake.available_methods = lambda: ["Tiny"]
    monkeypatch.setitem(sys.modules, "voxmetric.methods", fake)

    state = tiny_state()
    pkg = M.load_package(M.save_package(tmp_path / "p", card(), state))
    method, cfg, model = M.build_model(pkg)
    assert method is _TinyMethod and cfg == TinyConfig(4, ("H", "C")) and not model.training
    assert torch.equal(model.state_dict()["bn.running_mean"], state["bn.running_mean"])

    bad = M.load_package(M.save_package(tmp_path / "q", card(config={"width": 4, "depth": 3}), state))
    with pytest.raises(ModelError, match="depth"):
        M.build_model(bad)
    wrong = M.load_package(M.save_package(tmp_path / "r", card(config={"width": 8}), state))
    with pytest.raises(ModelError, match="do not fit"):
        M.build_model(wrong)
    unknown = M.load_package(M.save_package(tmp_path / "s", card(method="Nope"), state))
    with pytest.raises(ModelError, match="available: Tiny"):
        M.build_model(unknown)


def test_build_model_with_real_method_registry(tmp_path):
    methods = pytest.importorskip("voxmetric.methods", reason="voxmetric.methods not written yet")
    if not hasattr(methods, "get_method") or not methods.available_methods():
        pytest.skip("voxmetric.methods has no registered methods yet")
    name = methods.available_methods()[0]
    method = methods.get_method(name)
    cfg = method.default_config()
    net = method.build(cfg)
    c = card(method=name, role=method.role, config=method.config_to_dict(cfg))
    pkg = M.load_package(M.save_package(tmp_path / "p", c, net.state_dict()))
    method2, cfg2, model = M.build_model(pkg)
    assert method2.name == name and cfg2 == cfg and not model.training
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    pkg.card["config"]["no_such_field"] = 1
    with pytest.raises(ModelError, match="no_such_field"):
        M.build_model(pkg)


# ---- CLI -----------------------------------------------------------------------------------
def test_cli_list_show_install_remove(home, capsys):
    M.save_package(home / "bundled" / "demo-loc", card("demo-loc", role="localizer"), tiny_state())
    src = M.save_package(home / "src", card("mine", modality="mr", demo=False), tiny_state())
    assert main(["models", "install", str(src)]) == 0
    assert "installed mine" in capsys.readouterr().out

    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["NAME", "ROLE", "MODALITY", "METHOD", "FLAGS"]
    assert lines[2].split() == ["demo-loc", "localizer", "ct", "Tiny", "bundled,demo"]
    assert lines[3].split() == ["mine", "refiner", "mr", "Tiny"]

    assert main(["models", "show", "mine"]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and "refiner" in out and "(verified)" in out and '"dsc": 0.5' in out

    assert main(["models", "remove", "demo-loc"]) == 2
    assert "bundled" in capsys.readouterr().err
    assert main(["models", "remove", "mine"]) == 0
    assert main(["models", "show", "mine"]) == 2
    assert "no model called 'mine'" in capsys.readouterr().err


def test_cli_show_refuses_tampered(home, capsys):
    src = M.save_package(home / "src", card(), tiny_state())
    (src / "weights.safetensors").write_bytes(b"\0" * M.read_card(src)["weights_bytes"])
    assert main(["models", "show", str(src)]) == 2
    assert "SHA-256" in capsys.readouterr().err
