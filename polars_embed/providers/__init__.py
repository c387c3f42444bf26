"""Built-in providers, one module each; every module is a pluggy plugin."""
