"""Tuning: measured choices for a model's decisions, kept in a database and applied at
compile time (`compile(..., tuning_db=)`)."""
