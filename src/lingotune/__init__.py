"""lingotune: teach an English-centric LLM a new language by changing a few of its weights."""

__version__ = "0.1.0"
