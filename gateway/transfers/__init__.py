"""Outbound transfers: a DB-backed queue of STOW-RS pushes and the worker that runs them."""
