"""Top-ups: users buy USD credits through Stripe Checkout, by card or Alipay.

    config          the ``[topups]`` table of registry.toml
    rates           USD -> CNY exchange-rate sources, and the conversions both ways
    orders          the order store and its state machine; every credit and debit a
                    compare-and-set on the order in the same transaction as its ledger entry
    stripe_gateway  the calls made to Stripe with the official ``stripe`` library
    webhook         ``POST /webhooks/stripe`` and ``/v1/topups`` for the account
    simulator       a local Stripe-shaped server for tests and sandbox mode

Nothing here is imported on the per-request path of the model endpoints.
"""
