"""``cascade simulate-tier`` on the command line."""

from __future__ import annotations

import pytest

from cascade.cli import main


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    """The command's help names its profiles and its time-scale and overload options."""
    with pytest.raises(SystemExit) as exited:
        main(["simulate-tier", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in ("--profile", "--time-scale", "--max-concurrency", "--overload", "frontier"):
        assert word in out


def test_invalid_time_scale_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """A zero time scale exits 2 with a one-line message before any server starts."""
    assert main(["simulate-tier", "--profile", "7b", "--port", "0", "--time-scale", "0"]) == 2
    assert "time_scale 0.0: must be greater than 0" in capsys.readouterr().err
