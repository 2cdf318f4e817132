"""Budgets: per-tenant (or per-router) spend limits per period, paced and leased.

(what a budget is and its periods: banditd.domain.budgets)
pacer.py    the knapsack threshold and time pacing (pure maths)
ledger.py   this process's view: leases on slices of the budget, reservations, settlement
charges.py  the writer of Select's charges (in groups; those of an outage, later)
view.py     what one Select sees: the budgets covering it, or UNLIMITED (allows all, books nothing)
"""
