"""ElasticServing control plane: the PaddleService model, KPA autoscaling, the controller, the control API;
`kube/` (in-cluster operator) and `local/` (laptop stack and CLI) are the two platforms.

Requests never pass through here; the activator reports load to it and it scales replicas.
"""
