"""Tracked objects (track_script, track_interface, track_file, track_process)
and what they do to an instance's priority or state."""
