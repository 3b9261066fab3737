"""Every sub-command's --help renders (help texts come from config fields and may hold '%')."""

from __future__ import annotations

import pytest

from voxmetric.cli import build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_commands_are_the_documented_ones():
    assert {"demo", "segment", "train", "evaluate", "phantom", "models"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"voxmetric {command}" in capsys.readouterr().out
