"""ElasticServing runtime: the inference server inside each replica (`python -m runtime`).

A request flows down: runtime.protocols (Paddle Serving web API, KServe v2 REST JSON/binary, v2 gRPC:
wire format <-> InferRequest of numpy arrays) -> runtime.dataplane (model lookup, readiness, spec
checks, limits, metrics, request log) -> runtime.handlers (LAC, image classification, raw tensors:
`infer(inputs) -> outputs`) -> runtime.backends (Paddle, ONNX Runtime, TensorFlow). runtime.tensors
holds the one datatype table and BYTES codec; runtime.cli the flags; runtime.server wires it all.
"""
