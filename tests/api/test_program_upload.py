"""A model the server has no code for, over gRPC: a torch.export program uploaded by the client
command, searched under a speedup budget, exported with parity; a program carrying a pickle payload ends
the job unsafe_model with the payload never run in the worker."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from program_payloads import pickled_sample_inputs
from secateurs.api.server import Server
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.intake.program import save_program
from secateurs_client import Client, build_request, pb
from secateurs_client.cli import main as client_main
from service_helpers import QUICK_PROTOCOL, QUICK_PROTOCOL_FLAGS


def _program(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20", {"width": 8}).eval()  # as if the server had no code for it
    return save_program(model, torch.randn(1, 3, 32, 32), tmp_path / "resnet20.pt2")


def test_a_program_uploaded_by_the_client_command_is_searched_pruned_and_exported(server: Server, tmp_path: Path,
                                                                                  capsys) -> None:  # type: ignore[no-untyped-def]
    program, out = _program(tmp_path), tmp_path / "out"
    rc = client_main(["--server", server.address, "compress", "--arch", f"pt2:{program}", "--input-shape",
                      "1x3x32x32", "--speedup", "1.2", "--export", "onnx", "--out", str(out), *QUICK_PROTOCOL_FLAGS])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["arch"].startswith("pt2:") and len(report["model"]["arch"]) == 4 + 64  # its digest
    assert report["budget"]["speedup"] == 1.2 and report["search"]["trace"]  # searched, on measured latency
    assert report["parity"]["passed"]
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]
    assert (out / "model.onnx").stat().st_size > 1000


def test_a_program_with_a_pickle_payload_fails_unsafe_model_and_never_runs_it(client: Client,
                                                                               tmp_path: Path) -> None:
    marker = tmp_path / "ran-in-the-worker"
    evil = pickled_sample_inputs(_program(tmp_path), tmp_path / "evil.pt2", marker)
    blob = client.upload_blob(evil)
    job = client.wait(client.create_job(build_request(arch="", program_blob_id=blob.id, input_shape=(1, 3, 32, 32),
                                                      ratio=0.3, protocol=QUICK_PROTOCOL)).id, timeout=120)
    assert job.state == pb.FAILED and job.error.reason == "unsafe_model", job.error.message
    assert job.error.field == "model.program_blob_id" and "refused without running it" in job.error.message
    assert not marker.exists()
