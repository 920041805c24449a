"""ElasticServing runtime: the inference server inside each replica.

`python -m runtime --model lac --port $PORT` loads a model and serves the Paddle Serving web API and
the KServe v2 protocol; the activator forwards requests here.
"""
