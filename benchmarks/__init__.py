"""ElasticServing benchmarks: scripts that print numbers (ratios measured side by side in one run).

`python -m benchmarks` runs every suite and writes benchmarks/results/report.{json,md}.
"""
