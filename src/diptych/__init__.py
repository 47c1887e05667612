"""diptych: instruction-based image editing as in-context diptych inpainting."""

__version__ = "0.1.0"
