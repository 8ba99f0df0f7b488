"""The `strataml` command line: compile | run | inspect | opt."""
