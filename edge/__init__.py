"""EmoEdge: emotion inference on edge devices.

Everything that runs on the host lives here; torch-only code is confined to ``edge.zoo``.
"""

__version__ = "0.1.0"
