"""Protocol adapters, the top of a replica's data flow: each translates one wire format into
runtime.dataplane.InferRequest and the data plane's arrays back (paddle_web, v2_rest over HTTP in
http_api, whose requests http_server parses; v2_grpc), and nothing else."""
