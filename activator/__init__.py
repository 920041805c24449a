"""ElasticServing activator: the front door every request passes through.

http_front / grpc_front translate the wire format; dispatcher routes by host to a PaddleService side,
holds requests while it scales from zero, caps per-replica concurrency and forwards; autoscaler_link
brings routes and takes load reports and pokes to the autoscaler. See activator.main for the wiring.
"""
