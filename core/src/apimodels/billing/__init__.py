"""Where money is kept: the credits ledger (``ledger``: entries, holds, reservations, group
commit), billing one call (``biller``), prices and the bound on what a call may be charged
(``pricing``), exact amounts (``money``), the billable quantities (``usage``) and per-key
limits (``limits``). Below it only ``store``.
"""
