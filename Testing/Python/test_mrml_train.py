"""Training-curve helpers of voxmetric.mrml (loss table, plot chart) on real MRML nodes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxmetric.errors import InputError

pytestmark = pytest.mark.mrml
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
mrml = pytest.importorskip("voxmetric.mrml")


def _column(node, name: str) -> np.ndarray:
    array = node.GetTable().GetColumnByName(name)
    return np.array([array.GetValue(i) for i in range(array.GetNumberOfTuples())])


def test_loss_table_appends_and_merges_validation_rows(mrml_scene):
    node = mrml.loss_table(mrml_scene, "run loss")
    assert node.IsA("vtkMRMLTableNode") and node.GetName() == "run loss"
    assert [node.GetColumnName(i) for i in range(node.GetNumberOfColumns())] == list(mrml.LOSS_COLUMNS)
    assert node.GetNumberOfRows() == 0
    n = mrml.append_rows(node, [{"iteration": 10, "loss": 0.7}, {"iteration": 20, "loss": 0.5}])
    assert n == 2
    # a validation value at the iteration just logged fills that row; a new iteration adds one
    assert mrml.append_rows(node, [{"iteration": 20, "dsc": 0.4}]) == 2
    assert mrml.append_rows(node, [{"iteration": 25, "dsc": 0.6}, {"iteration": 30, "loss": None}]) == 4
    np.testing.assert_array_equal(_column(node, "iteration"), [10, 20, 25, 30])
    np.testing.assert_allclose(_column(node, "loss")[:2], [0.7, 0.5])
    assert math.isnan(_column(node, "loss")[2]) and math.isnan(_column(node, "loss")[3])
    dsc = _column(node, "dsc")
    assert math.isnan(dsc[0]) and dsc[1] == pytest.approx(0.4) and dsc[2] == pytest.approx(0.6)
    with pytest.raises(InputError, match="no column"):
        mrml.append_rows(node, [{"iteration": 40, "accuracy": 1.0}])
    assert node.GetNumberOfRows() == 4


def test_loss_chart_plots_every_column_against_the_iteration(mrml_scene):
    table = mrml.loss_table(mrml_scene, "curve")
    chart = mrml.loss_chart(mrml_scene, table, "curve chart")
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetXAxisTitle() == "iteration"
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    assert [s.GetYColumnName() for s in series] == ["loss", "dsc"]
    assert all(s.GetXColumnName() == "iteration" and s.GetTableNode() is table for s in series)
    assert series[0].GetLineStyle() == series[0].LineStyleSolid
    assert series[1].GetMarkerStyle() == series[1].MarkerStyleCircle
    with pytest.raises(InputError, match="no column 'step'"):
        mrml.loss_chart(mrml_scene, table, "bad", x_column="step")
    with pytest.raises(InputError):
        mrml.loss_table(mrml_scene, "empty", columns=())
