"""Model families and the registry by name."""
