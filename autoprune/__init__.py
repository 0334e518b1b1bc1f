"""autoprune: automated neural-network compression search."""

__version__ = "0.1.0"
