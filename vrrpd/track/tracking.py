"""Alias kept while another branch still imports it: use vrrpd.track.rules.

(Issue 18: tracking.py was split into the modules listed in
vrrpd/track/__init__.py; delete this file once nothing imports it.)"""
from vrrpd.track.rules import Verdict

__all__ = ["Verdict"]
