"""The OpenAI-compatible server (app.py) and, later, its backends."""
