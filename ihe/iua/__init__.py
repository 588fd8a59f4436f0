"""IHE IUA: bearer tokens and the roles they carry (Authorization Server's clients)."""
