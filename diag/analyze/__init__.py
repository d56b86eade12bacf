"""Analysis: normalized records in, statistics, decision-matrix rows and ranked findings out."""
