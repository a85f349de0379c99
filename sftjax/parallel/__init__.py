"""Mesh, logical axis rules, shardings and multi-host setup."""
