"""The embedded demo: ReWatch's recipe on a procedural toy world, on a CPU, in minutes."""
