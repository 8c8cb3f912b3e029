"""slimdiff.prune"""
