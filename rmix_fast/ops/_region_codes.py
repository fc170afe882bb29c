"""What one cell of a mixed image is made of: the codes of the blend engine's region maps.

A leaf module (no imports), shared by the public ops, the kernels' launchers, the reference and the
mixers, so that the ground truth does not depend on the code it judges.
"""

__all__ = ["BLEND", "OWN", "PARTNER"]

BLEND = 0  # lam * x[b] + (1 - lam) * x[perm[b]]
OWN = 1  # x[b]
PARTNER = 2  # x[perm[b]]; the kernels read every code other than BLEND and OWN as PARTNER
