"""Baselines the op benchmarks measure speed-ups against: the ops written the way their papers do."""
