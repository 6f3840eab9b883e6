"""Training of the learned generator (imports torch; not imported by `codec`)."""
