"""`gfldet` and `python -m gfldet`: the version and the list of commands."""

from __future__ import annotations

import pytest

import gfldet
from gfldet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_version_prints_the_package_version(capsys, run_python):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and gfldet.__version__ in capsys.readouterr().out
    out = run_python("-m", "gfldet", "--version", check=True)
    assert out.stdout.strip() == f"gfldet {gfldet.__version__}"


def test_python_dash_m_gfldet_lists_the_commands(run_python):
    out = run_python("-m", "gfldet", "--help", check=True)
    assert "train" in out.stdout and "infer" in out.stdout


def test_every_command_is_listed_and_has_help(run_python):
    """--help names every command, and each command's --help runs (its parser builds)."""
    from gfldet.cli import COMMANDS, build_parser

    out = run_python("-m", "gfldet", "--help", check=True).stdout
    names = ("train", "eval", "infer", "export", "benchmark", "convert-mmdet", "curves", "data")
    assert len(COMMANDS) == len(names) + 1 and all(name in out for name in (*names, "config"))
    parser = build_parser()
    for name in (*names, "config"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name, "--help"])
        assert info.value.code == 0


def test_the_runtime_choices_are_the_runtimes_module_s():
    from gfldet.cli import RUNTIMES
    from gfldet.inference import runtimes

    assert RUNTIMES == runtimes.RUNTIMES
