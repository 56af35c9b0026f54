"""Channel pruning's parts, one job each; `converters.prune` puts them together (and says how it works)."""
