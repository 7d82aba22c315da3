"""Tools that are not the method: benchmarks, studies, dataset preparation, weight conversion (see README, "Layout")."""
