"""Task definitions (data -> arrays, losses, generation, reports) behind the experiments."""
