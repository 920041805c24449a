"""The laptop stack: `elasticserving up` runs the controller, control API and activator on this machine,
with replicas as local processes (optionally forked from a pre-warmed zygote) and the CLI that drives it.
"""
