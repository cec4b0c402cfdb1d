"""DMD2's demo commands, run as its README writes them (``python -m demo.imagenet_example``)."""
