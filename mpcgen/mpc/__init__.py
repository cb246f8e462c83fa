"""Secure two-party computation runtime (CrypTen): compatibility shim, party launch, providers, cost meter."""
