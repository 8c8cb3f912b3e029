"""slimdiff.sample"""
