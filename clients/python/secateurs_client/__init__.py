"""Client for the secateurs model compression service (no torch needed).

    from secateurs_client import Client, build_request
    with Client("127.0.0.1:50051") as client:
        blob = client.upload_blob("weights.safetensors")
        job = client.create_job(build_request(arch="zoo:resnet20", input_shape=(1, 3, 32, 32),
                                              weights_blob_id=blob.id, ratio=0.5))
        job = client.wait(job.id)
        client.download_artifact(job.id, "onnx", "out/")
"""

from secateurs_client._client import DEFAULT_TARGET, TERMINAL, Client, build_request
from secateurs_client.errors import describe, field_violations
from secateurs_client.reports import report_metrics
from secateurs_client.v1 import compression_pb2 as pb

__all__ = ["Client", "build_request", "describe", "field_violations", "report_metrics", "pb", "DEFAULT_TARGET",
           "TERMINAL"]
