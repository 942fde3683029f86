"""Imports the modules that register further `ebt` subcommands (each keeps its CLI next to its code)."""
