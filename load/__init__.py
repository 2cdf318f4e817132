"""Load tests of a local banditd: a locust file (locustfile.py) and its runner (run.py)."""
