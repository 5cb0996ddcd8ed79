"""The HTTP API's service layer: what the Chalice routes call (one function each)."""
