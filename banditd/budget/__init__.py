"""Budgets: per-tenant (or per-router) spend limits per period, paced and leased.

spec.py     what a budget is and its periods (pure)
pacer.py    the knapsack threshold and time pacing (pure maths)
ledger.py   this process's view: leases on slices of the budget, reservations, settlement
"""
