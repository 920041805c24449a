"""ElasticServing control plane: the PaddleService model, KPA autoscaling, the controller and platforms.

Requests never pass through here; the activator reports load to it and it scales replicas.
"""
