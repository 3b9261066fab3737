"""Static checks of the Slicer modules (the Qt layer cannot run without the Slicer application)."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = [p.parent.name for p in ROOT.glob("VoxMetric*/CMakeLists.txt")]


def _ui_widgets(ui: Path) -> dict[str, ET.Element]:
    tree = ET.parse(ui)  # raises on invalid XML
    return {w.get("name"): w for w in tree.iter() if w.tag in ("widget", "layout", "spacer") and w.get("name")}


def test_modules_found():
    assert "VoxMetricSeg" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_used_exists(module):
    source = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    widgets = _ui_widgets(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    assert used, "the widget uses no ui names?"
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_match_the_parameter_node(module):
    source = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    wrapped = [c for c in tree.body if isinstance(c, ast.ClassDef)
               and (any(getattr(d, "id", None) == "parameterNodeWrapper" for d in c.decorator_list)
                    or c.name == f"{module}Parameters")]  # wrapped with the method fields added
    assert len(wrapped) == 1
    fields = {s.target.id for s in wrapped[0].body if isinstance(s, ast.AnnAssign)}
    ui = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    bound = {p.findtext("string") for p in ET.parse(ui).iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound <= fields, f"SlicerParameterName without a parameter: {sorted(bound - fields)}"


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_module_file(module):
    cmake = (ROOT / module / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", module)
    listed = set(re.findall(r"[\w/]+\.(?:py|ui|png)", cmake))
    present = {str(p.relative_to(ROOT / module)) for p in (ROOT / module).rglob("*")
               if p.suffix in (".py", ".ui", ".png") and "__pycache__" not in p.parts}
    assert present == listed, f"not in CMake: {sorted(present - listed)}; missing files: {sorted(listed - present)}"
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f"add_subdirectory({module})" in top


def test_extension_metadata():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", top), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top


@pytest.mark.parametrize("module", MODULES)
def test_module_file_is_thin_and_layered(module):
    source = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 400
    tree = ast.parse(source)
    top_imports = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top_imports |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    # torch and the engine's heavy parts are imported lazily, after dependencies are ensured.
    assert "torch" not in top_imports
    assert not {"safetensors", "slicerio", "monai"} & top_imports
    lib = ROOT / module / f"{module}Lib"
    for py in lib.glob("*.py"):
        text = py.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(slicer|vtk|qt|ctk)\b", text, re.M), f"{py} imports Slicer directly"
