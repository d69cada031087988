"""The entry points (absl): train, prepare, convert, sweep. Installed as `rewatch_jax.launch` with
console scripts (`rewatch-train`, ...) beside `python launch/<name>.py` (setup.py)."""
