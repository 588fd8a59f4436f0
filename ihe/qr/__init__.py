"""Query/Retrieve as a client of the producing sites (IHE RAD-14, RAD-16)."""
