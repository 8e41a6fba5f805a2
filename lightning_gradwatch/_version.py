"""Internal. The package's version, in a leaf module any part may import (``gradwatch.json`` records it)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
