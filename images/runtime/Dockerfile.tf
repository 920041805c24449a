# The inference runtime, CPU, with TensorFlow (tensorflow-cpu 2.21, the `tf` extra) for SavedModels,
# beside Paddle and ONNX Runtime. No model is baked in: a PaddleService names its model with
# `storageUri` (the replica serves $MODEL_DIR, the backend follows the files: a SavedModel's
# saved_model.pb selects TensorFlow) or bakes one into an image built FROM this one.
# Build from the repository root:
#   docker build -f images/runtime/Dockerfile.tf -t elasticserving/runtime-tf:latest .
# Without Docker: scripts/build-images.sh runtime-tf (same steps, see images/README.md).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# Paddle's libpaddle.so links the GNU OpenMP runtime, which the slim base does not have.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first, from the package metadata alone: this heavy layer stays cached while the code changes.
# (README.md is the package's long description: an empty one here, so editing it does not
# reinstall the dependencies)
COPY pyproject.toml setup.cfg ./
RUN : >README.md \
 && pip install ".[paddle,onnx,tf]" \
 && rm -rf build elasticserving.egg-info
COPY runtime/ runtime/
COPY activator/ activator/
COPY autoscaler/ autoscaler/
COPY README.md ./
RUN pip install --no-deps . \
 && rm -rf build elasticserving.egg-info \
 && python -c "import tensorflow as tf; print('TensorFlow', tf.__version__)"

# The platform sets PORT (spec.<side>.port), GRPC_PORT (port + 1) and, with storageUri, MODEL_DIR.
ENV PORT=9292 GRPC_PORT=9293 MODEL_DIR=/mnt/models
EXPOSE 9292 9293
USER 65532:65532
CMD ["sh", "-c", "exec python3 -m runtime --model \"$MODEL_DIR\" --name model --port \"$PORT\""]
