"""The in-cluster operator: PaddleServices from the Kubernetes API in, Deployments/Services/status out.

`python -m autoscaler.kube` runs it (client, informer-style watch, Lease leader, operator, platform).
"""
