"""The app: config and validation, one job, the results store, memory planning, provenance,
trackers.
"""
