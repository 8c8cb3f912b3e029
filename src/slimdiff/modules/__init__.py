"""slimdiff.modules"""
