"""The daemon itself: wiring, start and stop, the timer pump, transitions and
their side effects in order, the plan built from the configuration, sync
groups, leftovers of a crashed run, and reload (reload/)."""
