"""The `secateurs` command line end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

from secateurs.cli import main


def test_compress_writes_every_artifact_and_a_report(tmp_path, capsys):
    rc = main(["compress", "--model", "zoo:resnet20", "--input", "1x3x32x32", "--ratio", "0.5",
               "--out", str(tmp_path), "--quick"])
    assert rc == 0
    for name in ("model.onnx", "model.pt2", "plan.json", "report.json", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["parity"]["passed"]
    assert report["size"]["macs_reduction"] > 2
    assert report["latency"]["baseline"]["n"] >= 60 and report["latency"]["speedup"] > 0
    assert report["device"]["provider"] == "CPUExecutionProvider"
    assert {"load", "profile", "prune", "export", "benchmark", "report"} == set(report["stage_seconds"])
    out = capsys.readouterr().out
    assert "speedup" in out and str(tmp_path / "report.html") in out


def test_per_group_ratios_file(tmp_path):
    (tmp_path / "ratios.json").write_text(json.dumps({"layer1.0.conv1": 0.5}))
    rc = main(["compress", "--model", "zoo:resnet20", "--input", "1x3x32x32", "--ratios",
               str(tmp_path / "ratios.json"), "--out", str(tmp_path / "o"), "--quick"])
    assert rc == 0
    groups = {g["name"]: g for g in json.loads((tmp_path / "o" / "plan.json").read_text())["groups"]}
    assert groups["layer1.0.conv1"]["after"] == 8 and groups["layer2.0.conv1"]["after"] == 32


def test_inspect_lists_groups(capsys):
    assert main(["inspect", "--model", "zoo:resnet20", "--input", "1x3x32x32", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "layer3.2.conv1" in out and "12 groups" in out and "baseline on onnxruntime-cpu" in out


def test_bad_input_is_one_readable_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "secateurs.cli", "compress", "--model", "zoo:resnet20", "--input", "1x3x32",
         "--ratio", "0.5", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the model cannot run on input shape 1x3x32")
    assert "Traceback" not in proc.stderr
