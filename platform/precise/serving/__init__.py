"""serving stage: what the Ray Serve recall app (serve/app.py) is built from."""
