"""Accounts beyond their records: passwords, the mail that carries links, and revocation notices to the API."""
