"""Docker-less builds of the Dockerfiles under images/: OCI archives for `ctr images import`.

Entry point: `python3 -m imagebuild` (with images/ on PYTHONPATH), run by scripts/build-images.sh.
"""
