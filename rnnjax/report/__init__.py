"""Reporting: tables, figures, report, reproduce. Reads files; imports neither JAX nor Hydra at
module level.
"""
