"""The methods, each beside its command line: a method (``training.engine.Method``: its networks, optimizers,
EMAs and step) and its ``_cli`` module (the original's flags in their spelling, their checks, the data it reads and
how the method is built), which a thin script at the root hands to ``training.fit``."""
