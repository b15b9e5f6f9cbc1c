"""Tracked objects (keepalived: track_script, track_interface, track_file,
track_process) and what they do to an instance's priority or state.

The configured blocks and track_* lines are config.model's dataclasses
(VrrpScript, TrackFile, TrackProcess, Track); the runtime classes here hold
them by reference and keep only their own state.

- rules.py: the pure rules: a tracked object's priority adjustment or FAULT,
  the effective priority, the Verdict(fault, priority, pending) of an instance.
- vrrp_script.py: rise/fall counting and the tracker running a vrrp_script
  on its interval (through scripts.runner).
- track_file.py: reading a track file as keepalived does, init_file, and the
  watcher reporting each new value; inotify.py: the inotify binding it uses.
- track_process.py: matching processes to a vrrp_track_process block, the
  /proc scan, and the watcher with quorum and fork/terminate delays.
- instance.py: one instance's tracks and values combined into its Verdict,
  shared across instances (equal track lists, values and verdicts are one
  object each).
- trackers.py: the wiring to the daemon: builds every instance's tracking
  from the config (default weights, sync groups, the instance's own
  interface), runs the watchers, feeds link events, reports Verdicts.
- tracking.py: an import alias for Verdict, to be removed.
"""
