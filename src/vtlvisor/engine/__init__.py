"""The CPU engine: the only package that imports Unicorn."""
