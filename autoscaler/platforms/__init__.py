"""Platforms run replicas for the controller: `local` (processes on this machine) and `kubernetes`.

The controller talks to them only through `autoscaler.platforms.base.Platform`.
"""
