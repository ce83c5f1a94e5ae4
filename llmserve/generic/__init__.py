"""The generic path: any causal LM through its own forward and its own cache classes (see engine.py)."""
