"""slimdiff.eval"""
