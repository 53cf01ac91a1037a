"""Ray Serve applications of the platform (`serve run serve.app:app`)."""
