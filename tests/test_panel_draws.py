"""studies/panels/draw.py: the committed random designs are its output, byte for byte, and a
bad --names or --out is refused before anything is written."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies" / "panels"))
from draw import main  # noqa: E402

sys.path.pop(0)


def test_the_committed_designs_are_the_scripts_output(tmp_path):
    assert main(["--seed", "20261129", "--names", "QRST", "--out", str(tmp_path)]) == 0
    for name in "QRST":
        assert (tmp_path / f"{name}.json").read_bytes() == (ROOT / "studies" / "panels" / f"{name}.json").read_bytes()


def test_bad_names_or_out_write_nothing(tmp_path, capsys):
    assert main(["--names", "QQ", "--out", str(tmp_path)]) == 2
    assert "one distinct letter" in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert main(["--out", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
