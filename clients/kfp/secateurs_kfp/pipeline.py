"""A sample pipeline: import trained weights, compress them to a speedup, keep the result.

    python -m secateurs_kfp.pipeline compress_pipeline.yaml     # compile, then upload to KFP

In a real pipeline the weights come from the training step's Model output; here an importer
stands for it, so the sample runs on its own.
"""

import sys  # no `from __future__ import annotations`: KFP reads the pipeline's types
from typing import Callable, List, Optional

from kfp import compiler, dsl

from secateurs_kfp.component import compress_model


def build_pipeline(component: Callable[..., dsl.PipelineTask] = compress_model) -> Callable[..., object]:
    """The sample pipeline around `component` (one made by make_compress_component for another
    image or package source)."""

    @dsl.pipeline(name="secateurs-compress", description="Compress trained weights to a speedup with secateurs.")
    def compress_pipeline(
        weights_uri: str,
        server: str = "secateurs.secateurs.svc.cluster.local:50051",
        arch: str = "zoo:resnet20",
        input_shape: str = "1x3x32x32",
        speedup: float = 1.5,
        request_json: str = "",
    ) -> dsl.Model:
        weights = dsl.importer(artifact_uri=weights_uri, artifact_class=dsl.Model, reimport=False)
        compress = component(server=server, arch=arch, input_shape=input_shape, weights=weights.output,
                             speedup=speedup, request_json=request_json, labels={"pipeline": "secateurs-compress"})
        compress.set_display_name("compress with secateurs")
        compress.set_caching_options(False)  # each run is a new job; the server's own cache makes it cheap
        return compress.outputs["onnx_model"]

    return compress_pipeline


compress_pipeline = build_pipeline()


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    package_path = args[0] if args else "compress_pipeline.yaml"
    compiler.Compiler().compile(compress_pipeline, package_path=package_path)
    print(package_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
