"""Safety signals across the network (issue 16): event rates per 100 treatment sessions
from rollups kept equal to a recount (migration 0020)."""
