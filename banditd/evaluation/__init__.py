"""Offline evaluation: replay on labelled data, off-policy evaluation of candidate routers on the
decision log (and its proof on replay data), and warm starts from logged outcomes."""
