"""The exchange's rules: asks, bids, effective asks, surge and the market rate (``pricing``). Pure."""
