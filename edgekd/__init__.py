"""edgekd: distill, quantize, export, verify, profile and bundle compact models for edge devices."""
__version__ = "0.1.0"
