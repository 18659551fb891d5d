"""STUB (to be implemented): turns an event log into a built dataset (see schema.py)."""
