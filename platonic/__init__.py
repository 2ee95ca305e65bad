"""platonic: how language and vision representations align, and how that depends on the data."""

__version__ = "0.1.0"
