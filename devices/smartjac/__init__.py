"""Smartjac Site, Services and Software: message types, topics, simulator."""
