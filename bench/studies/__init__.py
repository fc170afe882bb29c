"""Studies: scripts that measure a property of the method (not a speed) and feed the benchmarks."""
