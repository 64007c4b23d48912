"""Routing: who must receive each event, through which channel (pure rules + agent)."""
