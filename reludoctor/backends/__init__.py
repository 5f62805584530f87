"""Everything format-specific, behind one interface (``base.Backend``); the core never asks which format it has."""
