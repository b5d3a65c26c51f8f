"""r1v: rebuild the Skywork R1V system.

A vision tower (InternViT) and a reasoning LLM joined by a small MLP connector, taught to reason over
images with cheap post-training. See README.md for the two set-up commands and DESIGN notes in docs.
"""

__version__ = "0.1.0"
