"""ElasticServing activator: the front door every request passes through.

Routes by Host to a PaddleService side, holds requests while the service scales from zero,
balances over ready replicas within their concurrency limits and reports load to the autoscaler.
"""
