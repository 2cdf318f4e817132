"""Live serving state: the routers a replica serves, their posteriors (and snapshots of them) and
their arms' circuit breakers."""
