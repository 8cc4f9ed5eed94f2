"""One-off studies: questions asked once, answered in benchmarks/studies/RESULTS.md."""
