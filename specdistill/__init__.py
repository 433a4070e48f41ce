"""specdistill: distill draft models for speculative decoding, and serve them losslessly."""

import logging

__version__ = "0.1.0"

# The library logs and never prints; entry points configure handlers.
logging.getLogger(__name__).addHandler(logging.NullHandler())
