"""Training side: `python -m train` and its verbs (evaluate, predict, export)."""
