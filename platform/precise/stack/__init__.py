"""stack stage."""
