"""Model handlers, the bottom of a replica's data flow: they declare tensor specs and implement
`infer(inputs) -> outputs` on numpy arrays (runtime.handlers.base); protocols never reach them."""

from __future__ import annotations

import argparse

from runtime.cli import mkldnn_for
from runtime.handlers.base import Handler, OnBatch
from runtime.handlers.image_input import ImageSource
from runtime.model_files import resolve_model
from runtime.models.preprocess import Preprocess


def build_handler(args: argparse.Namespace, on_batch: OnBatch) -> Handler:
    """The handler the command line asks for, not loaded yet (raises ModelLoadError for missing files)."""
    batch_timeout = max(0.0, args.batch_timeout_ms) / 1000.0
    mkldnn = mkldnn_for(args.handler, args.mkldnn)
    if args.handler == "lac":
        from runtime.handlers.lac import LacHandler

        return LacHandler(args.model, args.seg_separator, args.threads, args.gpu_id_list, args.max_batch_size,
                          batch_timeout, args.max_text_chars, on_batch)
    if args.handler in ("ocr", "imagenet"):
        source = ImageSource(args.image_base_dir, args.allow_urls, args.max_image_bytes, args.url_timeout)
    if args.handler == "ocr":
        from runtime.handlers.ocr import OcrHandler

        return OcrHandler(args.threads, args.gpu_id_list, source, args.max_image_pixels, mkldnn)
    files = resolve_model(args.model, args.backend, args.labels, args.preprocess)
    if args.handler == "imagenet":
        from runtime.handlers.image import ImageClassifier

        return ImageClassifier(files.path, files.backend, args.threads, args.gpu_id_list, files.labels,
                               Preprocess.from_file(files.preprocess), source, args.max_image_pixels,
                               args.max_batch_size, batch_timeout, on_batch, mkldnn)
    from runtime.handlers.raw import RawTensors

    return RawTensors(files.path, files.backend, args.threads, args.gpu_id_list, mkldnn, args.max_batch_size,
                      batch_timeout, on_batch)
