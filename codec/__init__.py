"""gracecodec: a talking-face generative video codec.

``import codec`` stays light: no torch, grpc or pynq are imported here.
"""

__version__ = "0.1.0"
