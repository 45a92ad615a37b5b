"""The mmgen command line: help, dispatch, sample, and errors for people."""

from __future__ import annotations

import subprocess
import sys

from mmgen.cli import main
from mmgen.pipelines import read_png_metadata


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "sample", "webui", "data", "eval", "bench"):
        assert name in out
    assert main(["data", "--help"]) == 0
    assert "pretokenize" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_sample_writes_pngs_with_metadata(tiny_bundle, tmp_path, capsys):
    code = main(["sample", "--bundle", str(tiny_bundle), "--prompt", "a red circle", "--num-images", "2", "--seed", "7", "--out", str(tmp_path)])
    assert code == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["a-red-circle-7.png", "a-red-circle-8.png"]
    assert read_png_metadata(files[1])["seed"] == 8
    assert main(["sample", "--info", str(files[0])]) == 0
    assert "seed: 7" in capsys.readouterr().out


def test_sample_errors_are_messages_not_tracebacks(tmp_path, tiny_bundle):
    proc = subprocess.run(
        [sys.executable, "-m", "mmgen.cli", "sample", "--bundle", str(tmp_path / "missing"), "--prompt", "x"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1 and "bundle folder not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "mmgen.cli", "sample", "--bundle", str(tiny_bundle), "--prompt", "x", "--top-p", "2"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1 and "top_p" in proc.stderr and "Traceback" not in proc.stderr
